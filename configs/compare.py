"""Sparse vs dense circuits at matched loss (`--mode=compare`, paper Figure 2).

  python -m sparse_circuits.main --config=configs/compare.py --mode=compare --workdir=runs/compare
  python -m sparse_circuits.main --config=configs/compare.py:smoke --mode=compare --workdir=/tmp/compare_smoke
  python -m sparse_circuits.main --config=configs/compare.py:old --mode=compare --workdir=runs/compare_old
  python -m sparse_circuits.main --config=configs/compare.py:gpu --mode=compare --workdir=runs/compare_gpu
  SECTIONS=compare COMPARE=h200 BUDGET_S=480 benchmarks/gpu_check.sh

Default (CPU, the tiny model's shape and budget: 2 layers, context 64,
900 steps of 64 x 64 tokens), the paper's regime (its Fig. 3): sparse
models *wider* at about the same number of nonzero weights. All three keep
~98k hidden nonzeros (d_model 64*ef, hidden L0 1/ef**2: 1/4, 1/16, 1/36;
token embedding and unembedding 1/ef by the pfrac rule), so only width
varies at fixed nonzeros; every MLP neuron and q/k/v channel still has
>= 2.6x min_per_neuron (4) nonzeros to choose from. Dense at d_model 16 to
128 so every sparse loss lies inside the frontier (the old family's sparse
losses, 2.56-2.70, lay between dense_128's 2.44 and dense_32's). Each
model's learning rate: the best held-out loss of 0.5x/1x/2x the recipe's
after 100 steps (compare.lr_multipliers). Circuits under mean ablation
(the headline) and zero ablation. Measured under mean ablation
(docs/results.md, "Compare"): 1.79x over 4 tasks, two of them with a
target above chance; its stages took 2 h 12 min before the zero-ablation
circuits (about 2 h 50 min in all on two idle cores).
`old`: the family measured first (README, docs/results.md: 2.22x over 4
tasks): sparse at d_model 128 keeping 1/4 and 1/8 of the hidden weights,
dense at 32, 64, 128, the recipe's LR for all, mean ablation only, up to
8 tasks by per-prompt accuracy; its stages added up to 45 min.
`smoke`: a few steps on a 2.5 MB corpus, two tasks, tiny widths, weight
sparsity without activation top-k, every task counted as learned, a
two-step LR rule of two values: it checks the plumbing in CI, its numbers
mean nothing. `gpu`: the same experiment at accelerator size (4 layers,
context 256, d_model up to 1024, 20k steps of 128 x 256 tokens; not run
yet: from the paper model's 121k tokens/s on one H200 (docs/results.md,
"One GPU"; 8 layers, twice these), a sparse model here would take roughly
45 min, the dense ones less, about 2-3 h in all with the pruning, before
the LR trials (300 steps per model) and the zero-ablation circuits).
`h200`: the paper's regime in minutes on one GPU (not run yet): sparse
models wider than their dense partners at the same hidden nonzeros, hidden
L0 1/16 and 1/64, 24.6M tokens per model; see its comments for the time
estimate (<= 8 min on one H200, compiles included). Run it through
benchmarks/gpu_check.sh (the line above), which cuts it at BUDGET_S.
Other widths or L0 levels: `--config.compare.models.NAME.d_model=...`.
"""

import ml_collections

from sparse_circuits import config_lib


def _model(family, d_model, pfrac=None, expansion_factor=None, **extra):
  """A model of the family; extra: `afrac` (sparse only; default the base
  config's 0.25)."""
  spec = {"family": family, "d_model": d_model, **extra}
  if family == "sparse":
    spec.update(pfrac=pfrac, expansion_factor=expansion_factor)
  return spec


def get_config(arg: str = "default"):
  if arg not in ("default", "smoke", "old", "gpu", "h200"):
    raise ValueError(f"unknown compare config {arg!r}: want default, smoke, "
                     "old, gpu or h200")
  c = config_lib.base_config("small" if arg in ("gpu", "h200") else "tiny")
  c.name = f"compare_{arg}"
  c.train.eval_batches = 16  # held-out LM loss over 16 x 64 windows
  c.tasks.suite = "paper"    # the paper's 20 tasks ("all": + extras)
  c.tasks.names = ()         # the whole suite
  # Sizes only: no controls (prune a sub-workdir again for them).
  c.prune.random_control = False
  c.prune.nonsense_control = False
  c.prune.stability_seeds = 1
  if arg in ("default", "old"):
    c.prune.sweep_size = 8  # a quarter of the main job's sweep

  cc = c.compare = ml_collections.ConfigDict()
  cc.min_accuracy = 0.8      # a task is compared when every model learns it
  # ... measured as "pair_accuracy" (held-out pairs, the README's measure)
  # or "accuracy" (per prompt).
  cc.select_by = "pair_accuracy"
  cc.max_tasks = 4           # the first 4 of them (0 = all)
  cc.skip_bigram_solvable = True  # else_elif: no circuit needed
  cc.target_rule = "relative"  # or "absolute" (prune.target_loss only)
  cc.target_factor = 1.25    # relative: x the worst model's full task loss
  cc.bootstrap = 1000        # resamples of the tasks for the intervals
  cc.seed = 0
  # The LR rule, the same for both families: each model's opt.lr is the
  # recipe's times the multiplier with the best held-out loss after
  # lr_steps steps (() = the recipe's LR for all).
  cc.lr_multipliers = (0.5, 1.0, 2.0)
  cc.lr_steps = 100
  # Circuits under each ablation (prune.ablation); the first is the
  # headline's.
  cc.ablations = ("mean", "zero")
  cc.models = {
      "sparse_128_l4": _model("sparse", 128, 1.0, 2.0),
      "sparse_256_l16": _model("sparse", 256, 1.0, 4.0),
      "sparse_384_l36": _model("sparse", 384, 1.0, 6.0),
      "dense_16": _model("dense", 16),
      "dense_32": _model("dense", 32),
      "dense_64": _model("dense", 64),
      "dense_128": _model("dense", 128),
  }

  if arg == "old":
    cc.select_by = "accuracy"
    cc.max_tasks = 8
    cc.lr_multipliers = ()
    cc.ablations = ("mean",)
    cc.models = {
        "sparse_128_keep4": _model("sparse", 128, 1.0, 2.0),
        "sparse_128_keep8": _model("sparse", 128, 0.5, 2.0),
        # dense_32: the first run of this config (without it) gave dense
        # losses 2.39 (d 64) and 2.44 (d 128) against 2.56 and 2.70 sparse,
        # no overlap; a narrower dense model reaches into the sparse range.
        "dense_32": _model("dense", 32),
        "dense_64": _model("dense", 64),
        "dense_128": _model("dense", 128),
    }
  elif arg == "smoke":
    c.data.max_corpus_bytes = 2_500_000
    c.data.eval_fraction = 0.03
    c.model.n_layer, c.model.block_size = 1, 32
    c.train.num_steps, c.train.batch_size = 6, 8
    c.train.eval_every = c.train.checkpoint_every = 6
    c.train.eval_batches = 1
    c.tasks.names = ("single_double_quote", "bracket_counting")
    c.tasks.n_train, c.tasks.n_test = 16, 8
    # Compile time is all a smoke run spends: one mask step, no
    # calibration (an LBFGS program) and no activation top-k.
    c.prune.steps, c.prune.batch_size, c.prune.mean_batches = 1, 8, 1
    c.prune.calibrate = False
    c.prune.sweep_size = 1
    cc.min_accuracy = 0.0
    cc.bootstrap = 200
    cc.lr_multipliers, cc.lr_steps = (1.0, 2.0), 2
    cc.models = {
        "sparse_32_keep4": _model("sparse", 32, 0.25, 1.0, afrac=0.0),
        "sparse_32_keep8": _model("sparse", 32, 0.125, 1.0, afrac=0.0),
        "dense_16": _model("dense", 16),
        "dense_32": _model("dense", 32),
    }
  elif arg == "h200":
    # The default's family at the small config's shape (4 layers, context 256):
    # both sparse models keep ~196k hidden nonzeros (d_model 64*ef, hidden
    # L0 1/ef**2), as dense_64 does; dense 32..256 span the frontier.
    # 750 steps of 128 x 256 tokens = 24.6M tokens per model (2.4 passes
    # over the standard library's 10.4M tokens). Estimate for one H200,
    # scaled from the paper model's step there (121k tokens/s with the XLA
    # top-k, 68% of it activation top-k; docs/results.md) by activation
    # and matmul size: sparse_512 ~60 s, sparse_256 ~30 s, the dense four ~60 s
    # together; compiles ~15 s per model; pruning 6 models x 3 tasks at 8
    # settings x 100 steps ~4 min with its compiles; data 20 s: about 8
    # min. Not run yet: its first device run replaces this estimate.
    c.model.compute_dtype = "bfloat16"
    c.train.num_steps, c.train.batch_size = 750, 128
    c.train.log_every = 50
    c.train.eval_every = c.train.checkpoint_every = 750
    c.prune.steps, c.prune.batch_size, c.prune.sweep_size = 100, 32, 8
    c.prune.mean_batches = 4
    cc.max_tasks = 3
    cc.bootstrap = 500
    # Within its device budget: the recipe's LR and mean ablation only.
    cc.lr_multipliers, cc.ablations = (), ("mean",)
    cc.models = {
        "sparse_256_l16": _model("sparse", 256, 1.0, 4.0),
        "sparse_512_l64": _model("sparse", 512, 1.0, 8.0),
        "dense_32": _model("dense", 32),
        "dense_64": _model("dense", 64),
        "dense_128": _model("dense", 128),
        "dense_256": _model("dense", 256),
    }
  elif arg == "gpu":
    c.train.num_steps, c.train.batch_size = 20_000, 128
    c.train.checkpoint_every = 1000
    c.train.eval_every = 1000
    cc.max_tasks = 0
    cc.models = {
        "sparse_1024_keep16": _model("sparse", 1024, 1.0, 4.0),
        "sparse_1024_keep64": _model("sparse", 1024, 0.25, 4.0),
        "dense_256": _model("dense", 256),
        "dense_512": _model("dense", 512),
        "dense_1024": _model("dense", 1024),
    }
  return c

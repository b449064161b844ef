"""Config construction and validation shared by every file in configs/.

The configs/*.py files are thin: they call `base_config(size)` and override.
`validate(config)` runs before anything compiles and names the wrong field.
"""

import ml_collections

from sparse_circuits import sites
from sparse_circuits.errors import ConfigError

SIZES = {
    # name: (n_layer, d_model, n_head, d_head, d_mlp, block_size, batch,
    #        steps, pfrac, expansion_factor)
    # micro: the tests' model (seconds on a CPU), on 2.5 MB of the corpus.
    "micro": (1, 32, 2, 16, 128, 32, 8, 20, 1.0, 2.0),
    "tiny": (2, 128, 8, 16, 512, 64, 64, 900, 1.0, 2.0),
    "small": (4, 256, 16, 16, 1024, 256, 64, 5000, 1.0, 4.0),
    "paper": (8, 1024, 64, 16, 4096, 256, 512, 100000, 0.25, 4.0),
}


def base_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  size, _, variant = arg.partition("_")
  if size not in SIZES or variant not in ("", "dense"):
    raise ConfigError(f"unknown config argument {arg!r}: want one of "
                      f"{sorted(SIZES)} optionally with _dense")
  (n_layer, d_model, n_head, d_head, d_mlp, block_size, batch, steps, pfrac,
   ef) = SIZES[size]
  dense = variant == "dense"

  c = ml_collections.ConfigDict()
  c.name = arg
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.n_layer = n_layer
  c.model.d_model = d_model
  c.model.n_head = n_head
  c.model.d_head = d_head
  c.model.d_mlp = d_mlp
  c.model.block_size = block_size
  c.model.vocab_size = 2048
  c.model.afrac = 0.0 if dense else 0.25  # 0 disables activation sparsity
  c.model.afrac_sites = sites.AFRAC_NAMES
  c.model.sink = False
  c.model.bigram_table = True
  c.model.pos_emb = True
  c.model.compute_dtype = "float32"  # or "bfloat16" (fp32 master weights)
  # Recompute each block's forward in the backward: "none", "block" or
  # "topk" (model.REMAT_POLICIES); less memory for more compute.
  c.model.remat = "none"
  # AbsTopK: "xla" (sparsity.topk_mask), "pallas" (one kernel per call,
  # sparse_circuits/topk_pallas.py; interpreted on CPU, slow) or "auto" (the
  # one measured faster on this backend: "xla" until a device measures it).
  c.model.topk_impl = "auto"

  c.data = ml_collections.ConfigDict()
  # "stdlib" = the running interpreter's standard library; "site-packages" =
  # the installed packages; anything else is a directory, glob, .jsonl or
  # .parquet path. A tuple, so the command line can set it:
  # --config.data.sources=/my/code or '("/my/code", "stdlib")'.
  c.data.sources = ("stdlib",)
  c.data.text_field = "text"      # .jsonl field / .parquet column
  c.data.max_file_bytes = 1_000_000
  c.data.eval_fraction = 0.01
  c.data.tokenizer_dir = ""       # "" = train one into WORKDIR/tokenizer
  c.data.max_corpus_bytes = 0     # 0 = no limit
  c.data.seed = 0
  c.data.tokenizer_max_bytes = 100_000_000  # BPE training text; 0 = all
  # A token split up to this size is read into RAM; larger ones are read
  # window by window through tensorstore (e.g. from gs://).
  c.data.in_memory_max_bytes = 1 << 30

  c.sparsity = ml_collections.ConfigDict()
  c.sparsity.enabled = not dense
  c.sparsity.pfrac = ef * ef if dense else pfrac
  c.sparsity.expansion_factor = ef
  c.sparsity.min_per_neuron = 4
  c.sparsity.anneal_start = 0.01
  c.sparsity.anneal_end = 0.5

  c.opt = ml_collections.ConfigDict()
  c.opt.lr = 1.28e-2
  c.opt.b1 = 0.9
  c.opt.b2 = 0.95
  c.opt.eps = 0.1
  c.opt.weight_decay = 0.1
  c.opt.warmup_frac = 0.01
  c.opt.grad_rms_norm = True

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = steps
  c.train.batch_size = batch
  # Split each step's batch into this many sequential microbatches (gradient
  # accumulation inside the step): same update, 1/M of the activation memory.
  c.train.microbatches = 1
  c.train.log_every = 10
  c.train.eval_every = 100
  c.train.eval_batches = 4
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 2
  c.train.init_from = ""

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)       # (data, fsdp, tensor); -1 = all devices
  c.mesh.rules = (
      # (parameter path regex, PartitionSpec entries); first match wins.
      (r"bigram_table", ("fsdp", "tensor")),
      (r"(wte|lm_head)", ("tensor", "fsdp")),
      (r"wpe", (None, "fsdp")),
      (r"c_attn/kernel|c_fc/kernel", ("fsdp", "tensor")),
      (r"c_proj/kernel", ("tensor", "fsdp")),
      (r".*", ()),
  )

  # Multi-host and ahead-of-time checks (sparse_circuits/distributed.py,
  # compile_check.py; BUILD.md).
  c.distributed = ml_collections.ConfigDict()
  # compile_check fails above this estimate per device; 0 = the device's
  # own capacity where JAX reports it (GPU), else no limit.
  c.distributed.device_memory_gb = 0.0
  # compile_check for a TPU slice from any machine with libtpu, e.g.
  # "v5e:4x4" (v5e-16) with chips_per_host (2, 2, 1); "" = attached devices.
  c.distributed.compile_topology = ""
  c.distributed.compile_chip_config = "default"
  c.distributed.compile_chips_per_host = (2, 2, 1)

  c.tasks = ml_collections.ConfigDict()
  c.tasks.seed = 0
  c.tasks.n_train = 512
  c.tasks.n_test = 128
  c.tasks.user_tasks = ""          # path to a .jsonl of user tasks
  c.tasks.names = ()               # tasks to build/evaluate; () = suite + user
  c.tasks.suite = "paper"          # "paper" (the paper's 20) or "all" (+ extras)

  if size == "micro":  # every step logged; checkpoints and evals at 10
    c.data.max_corpus_bytes = 2_500_000
    c.data.eval_fraction = 0.03
    c.train.log_every, c.train.eval_every = 1, 10
    c.train.checkpoint_every, c.train.eval_batches = 10, 1

  c.prune = ml_collections.ConfigDict()
  # Task names, or ("learned",): every task the model gets >= min_accuracy
  # of test pairs right (eval_summary.json of the step, else evaluated).
  c.prune.tasks = ("single_double_quote",)
  c.prune.min_accuracy = 0.8
  c.prune.target_loss = 0.15
  c.prune.steps = 300
  c.prune.batch_size = 64
  c.prune.weight_decay = 1e-3
  c.prune.b2 = 0.95
  c.prune.clip = 1.0
  c.prune.init_std = 0.01
  c.prune.seed = 0
  # The sweep's first setting (the paper's values) ...
  c.prune.k_coef = 1e-4
  c.prune.lr = 3e-3
  c.prune.temperature = 0.1
  c.prune.init_mean = 0.1
  # ... and sweep_size - 1 more drawn from these log ranges (lo, hi) by a
  # seeded Latin hypercube; one value fixes a hyperparameter. All of them
  # train at once in one vmapped program.
  c.prune.sweep_size = 32
  c.prune.sweep_seed = 0
  c.prune.sweep_k_coef = (3e-5, 3e-3)
  c.prune.sweep_lr = (3e-3, 3e-2)
  c.prune.sweep_temperature = (0.03, 0.3)
  c.prune.sweep_init_mean = (0.03, 0.3)
  # The selected setting is pruned with this many seeds in all (stability),
  # and the nonsense task (a coin per pair decides the answer) as often.
  c.prune.stability_seeds = 3
  c.prune.nonsense_control = True
  # Flag a circuit larger than this times the nonsense task's circuit.
  c.prune.nonsense_ratio = 0.5
  c.prune.mean_batches = 8
  # What a pruned node is replaced by: "mean" (its mean activation over
  # prune.mean_batches pretraining batches, the paper's) or "zero".
  c.prune.ablation = sites.MEAN
  c.prune.calibrate = True
  c.prune.random_control = True
  if size == "tiny":  # minutes on two CPU cores
    # Cheaper per setting rather than fewer settings: 60 steps of 8 pairs
    # with higher learning rates found circuits as small as 100 steps of 16
    # pairs (single_double_quote: 54 nodes vs 60; 48-50 with 2x the steps).
    c.prune.steps = 60
    c.prune.batch_size = 8
    c.prune.sweep_size = 16
    c.prune.k_coef = 1e-3
    c.prune.lr = 1e-2
    c.prune.sweep_k_coef = (1e-4, 1e-2)
    c.prune.sweep_lr = (5e-3, 5e-2)

  # The authors' checkpoint format (sparse_circuits/interop.py).
  c.interop = ml_collections.ConfigDict()
  c.interop.path = ""              # --mode=import: dir with beeg_config.json
  # tokenizer_name written to an exported beeg_config.json; "" = the
  # imported model's, else one derived from this run's tokenizer files.
  c.interop.tokenizer_name = ""
  # --mode=import_circuit (sparse_circuits/authors.py): the authors'
  # viz_data.pt; the task it is for ("" = from its path), the circuit's
  # directory name under circuits/ ("" = authors_<task dir>), the two
  # candidates (target, alternative) of rows 0..N/2-1 of its task samples
  # (() = the task's known rule), and a circuit to compare it with (a
  # circuit.json or a task of this workdir; "" = this workdir's circuit of
  # the same task, if any).
  c.interop.viz_data = ""
  c.interop.task_name = ""
  c.interop.circuit_name = ""
  c.interop.candidates = ()
  c.interop.compare = ""

  # Bridges to a frozen dense run (--mode=bridge; sparse_circuits/experiments/bridge.py)
  # and steering the dense run through a circuit node (--mode=steer).
  c.bridge = ml_collections.ConfigDict()
  c.bridge.dense_workdir = ""      # the dense run: ours, or --mode=import'ed
  c.bridge.encoder_afrac = 0.25    # encoder AbsTopK (of the sparse width); 0 = off
  c.bridge.coefs = ml_collections.ConfigDict(
      {"nmse_d2s": 1.0, "nmse_s2d": 1.0, "kl_d2s": 1.0, "kl_s2d": 1.0})
  # "all": every hybrid path each step (the paper's sum); "cycle": one switch
  # point per step, in turn, weighted 2·n_layer (same sum over a cycle).
  c.bridge.kl_paths = "all"
  c.steer = ml_collections.ConfigDict()
  c.steer.task = "single_double_quote"
  c.steer.node = ""                # "site:index"; "" = the circuit's residual
                                   # read node with the largest ablation effect
  c.steer.strengths = tuple(i / 10 for i in range(11))
  c.steer.random_seeds = (0, 1, 2, 3, 4)
  c.steer.reference_batches = 4    # pretraining batches for the RMS ratio

  return c


def _require(cond, field, msg):
  if not cond:
    raise ConfigError(f"config.{field}: {msg}")


def _validate_prune(p) -> None:
  _require(0 < p.target_loss, "prune.target_loss", "must be positive")
  _require(p.steps > 0 and p.batch_size > 0, "prune.steps",
           "steps and batch_size must be positive")
  _require(p.sweep_size >= 1, "prune.sweep_size", "must be at least 1")
  for f in ("k_coef", "lr", "temperature", "init_mean"):
    r = tuple(p[f"sweep_{f}"])
    _require(p[f] > 0 and len(r) in (1, 2) and 0 < r[0] <= r[-1],
             f"prune.sweep_{f}", f"want a positive prune.{f} and (lo, hi) "
             f"with 0 < lo <= hi (or one value), got {p[f]}, {r}")
  _require(p.stability_seeds >= 1, "prune.stability_seeds",
           "must be at least 1 (the selected run itself)")
  _require(0 <= p.min_accuracy <= 1, "prune.min_accuracy", "must be in [0, 1]")
  _require(p.nonsense_ratio > 0, "prune.nonsense_ratio", "must be positive")
  _require(p.ablation in sites.ABLATIONS, "prune.ablation",
           f"want one of {sites.ABLATIONS}, got {p.ablation!r}")
  _require(len(tuple(p.tasks)) > 0, "prune.tasks",
           'names no task (give names or "learned")')


def validate(c) -> None:
  """Raises ConfigError (a ValueError) naming the first wrong field; cheap
  (no compilation)."""
  # Here, not at the top: config files import this module while flags are
  # parsed, before main() sets up host memory, and these two import JAX.
  from sparse_circuits import model as model_lib  # pylint: disable=g-import-not-at-top
  from sparse_circuits import sparsity  # pylint: disable=g-import-not-at-top
  m = c.model
  for f in ("n_layer", "d_model", "n_head", "d_head", "d_mlp", "block_size",
            "vocab_size"):
    _require(isinstance(m[f], int) and m[f] > 0, f"model.{f}",
             f"must be a positive integer, got {m[f]!r}")
  _require(0.0 <= m.afrac <= 1.0, "model.afrac",
           f"must be in [0, 1] (0 = off), got {m.afrac}")
  bad = set(m.afrac_sites) - set(sites.AFRAC_NAMES)
  _require(not bad, "model.afrac_sites",
           f"unknown {sorted(bad)}; known {sites.AFRAC_NAMES}")
  if m.afrac > 0:
    smallest = min(m.d_model, m.d_mlp, m.n_head * m.d_head)
    _require(int(m.afrac * smallest) >= 1, "model.afrac",
             f"{m.afrac} keeps no channel of a width-{smallest} site")
  _require(m.compute_dtype in ("float32", "bfloat16"), "model.compute_dtype",
           f"must be float32 or bfloat16, got {m.compute_dtype!r}")
  _require(m.remat in model_lib.REMAT_POLICIES, "model.remat",
           f"want one of {sorted(model_lib.REMAT_POLICIES)}, got "
           f"{m.remat!r}")
  _require(m.topk_impl in model_lib.TOPK_IMPLS, "model.topk_impl",
           f"want one of {model_lib.TOPK_IMPLS}, got {m.topk_impl!r}")
  _require(m.vocab_size == 2048 or c.data.tokenizer_dir, "model.vocab_size",
           "the built-in tokenizer has 2048 ids; set data.tokenizer_dir for "
           "another vocabulary")
  t = c.train
  _require(t.num_steps > 0, "train.num_steps", "must be positive")
  _require(t.batch_size > 0, "train.batch_size", "must be positive")
  micro = t.microbatches
  _require(isinstance(micro, int) and micro >= 1 and
           t.batch_size % micro == 0, "train.microbatches",
           f"must be a positive integer dividing train.batch_size="
           f"{t.batch_size}, got {micro!r}")
  _require(t.checkpoint_every > 0, "train.checkpoint_every",
           "must be positive")
  _require(t.eval_every > 0, "train.eval_every", "must be positive")
  _require(c.opt.lr > 0, "opt.lr", "must be positive")
  _require(len(c.data.sources) > 0, "data.sources", "names no source")
  _require(all(isinstance(x, str) and x for x in c.data.sources),
           "data.sources", f"must be non-empty strings, got "
           f"{tuple(c.data.sources)!r}")
  s = c.sparsity
  _require(s.expansion_factor > 0, "sparsity.expansion_factor",
           "must be positive")
  _require(0 < s.pfrac <= s.expansion_factor ** 2, "sparsity.pfrac",
           f"must be in (0, expansion_factor**2 = {s.expansion_factor**2}]")
  _require(0 <= s.anneal_start < s.anneal_end <= 1, "sparsity.anneal_end",
           "need 0 <= anneal_start < anneal_end <= 1")
  _require(len(tuple(c.mesh.shape)) == 3, "mesh.shape",
           "needs 3 entries (data, fsdp, tensor)")
  _validate_prune(c.prune)
  _require(c.tasks.suite in ("paper", "all"), "tasks.suite",
           f"must be 'paper' or 'all', got {c.tasks.suite!r}")
  if "bridge" in c:
    b = c.bridge
    _require(0.0 <= b.encoder_afrac <= 1.0, "bridge.encoder_afrac",
             f"must be in [0, 1] (0 = off), got {b.encoder_afrac}")
    for k, v in b.coefs.items():
      _require(v >= 0, f"bridge.coefs.{k}", f"must be >= 0, got {v}")
    _require(b.kl_paths in ("all", "cycle"), "bridge.kl_paths",
             f"must be 'all' or 'cycle', got {b.kl_paths!r}")
  if "steer" in c:
    st = c.steer
    _require(len(st.strengths) > 0 and min(st.strengths) >= 0,
             "steer.strengths", "needs at least one strength, all >= 0")
    _require(len(st.random_seeds) > 0, "steer.random_seeds",
             "needs at least one seed for the random control")
    _require(st.reference_batches > 0, "steer.reference_batches",
             "must be positive")
  if s.enabled:
    cfg = model_lib.ModelConfig.from_config(m)
    sparsity.make_plan(
        model_lib.abstract_params(cfg),
        sparsity.Schedule(t.num_steps, s.pfrac, s.expansion_factor,
                          s.anneal_start, s.anneal_end), s.min_per_neuron)

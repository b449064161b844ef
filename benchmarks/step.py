"""Train-step benchmark: `python -m benchmarks.step --config=configs/tiny.py
[--torch] [--topk] [--noprune] [--rounds=7] [--workdir=RUN]`.

Train throughput (tokens/s) on the first attached device, model TFLOP/s
(`sparse_circuits.flops`), MFU against a matmul timed on the same device in
the same run, and the share of the step spent in weight top-k, activation
top-k and the input pipeline. All variants are timed in interleaved rounds
(A B C A B C ...) and each figure is the median over rounds, so a noisy
shared machine shifts them together; compare ratios within one run, not
absolute times across runs.

Shares: weight top-k = `sparsity.project` of the real parameters timed
alone / step; activation top-k = 1 - step(afrac = 0) / step; input pipeline
= step fed from `data.train_iterator` / step on an in-memory batch - 1.

`--noshares` times the step alone (to compare configs quickly). `--topk`
compares `lax.top_k` + scatter (and `lax.approx_max_k`) with the 4-ary
search of `sparsity.topk_mask` (and the bisection it replaced) on the weight
projection and on the activation rows of this config. `--prune` times mask
training plus the k search for one task (`prune.prune_task`; a random model
and a synthetic task unless --workdir holds a trained run) and the
vectorised sweep (8 settings in one program vs 1). `--profile=N` first
traces N steps and prints the time of each kind of XLA operation
(`benchmarks.step_profile`). `--ab` only times the code before the 4-ary
top-k and the grouped projection against now, pair by pair in the same
rounds (`before_code`; with --profile, profiles both first). `--torch` times
`benchmarks.torch_step`, the same step in plain PyTorch, in the same rounds.
"""

import atexit
import contextlib
import functools
import os
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from sparse_circuits import compile_check
from sparse_circuits import flops
from sparse_circuits import model as model_lib
from sparse_circuits import runs
from sparse_circuits import sharding
from sparse_circuits import sparsity
from sparse_circuits import train


# ----------------------------------------------------------------- timing


def race(contenders: dict, rounds: int = 7, seconds: float = 0.5) -> dict:
  """Median seconds per call of each `fn(n)` (which runs n calls and
  blocks), timed in interleaved rounds after one warm-up call each."""
  n_per = {}
  for name, fn in contenders.items():
    fn(1)  # compile / warm up
    start = time.perf_counter()
    fn(1)
    one = max(time.perf_counter() - start, 1e-6)
    n_per[name] = max(1, min(50, int(seconds / one)))
  times = {name: [] for name in contenders}
  for _ in range(rounds):
    for name, fn in contenders.items():
      start = time.perf_counter()
      fn(n_per[name])
      times[name].append((time.perf_counter() - start) / n_per[name])
  return {name: statistics.median(t) for name, t in times.items()}


def matmul(device):
  """(run, FLOPs per call, description) of one large square matmul on
  `device`: its FLOP/s is the compute ceiling MFU is measured against."""
  if device.platform == "cpu":
    n, dtype = 2048, jnp.float32
  else:
    n, dtype = 8192, jnp.bfloat16
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.device_put(jax.random.normal(k1, (n, n), dtype), device)
  b = jax.device_put(jax.random.normal(k2, (n, n), dtype), device)
  return (_runner(jax.jit(lambda a, b: a @ b), a, b), 2.0 * n ** 3,
          f"{n}^3 {jnp.dtype(dtype).name}")


# ------------------------------------------------------------------ train


class _Stepper:
  """A config's train step compiled for one device, state threaded through;
  `memory` is XLA's estimate for it (compile_check's Report)."""

  def __init__(self, config, device):
    self.setup = setup = train.make_setup(config, [device])
    # Lowered first and from the same arguments as compile_check's, so the
    # program is identical and a persistent compilation cache serves both.
    start = time.perf_counter()
    self.step_fn = train.make_train_step(setup).lower(
        *compile_check.train_step_args(setup)).compile()
    self.memory = compile_check.report_of("train step", self.step_fn,
                                          time.perf_counter() - start)
    self.params, self.opt = train.init_state(setup, config.seed)
    plan = setup.plan
    # Time the steady state: after annealing, at the final k.
    self.step = jax.device_put(
        jnp.int32(plan.schedule.end_step if plan else 0),
        sharding.replicated(setup.mesh))
    rng = np.random.default_rng(0)
    self.batch = sharding.global_batch(
        rng.integers(0, config.model.vocab_size,
                     (config.train.batch_size, config.model.block_size + 1),
                     dtype=np.int32), setup.mesh)

  def run(self, k, batches=None):
    m = None
    for _ in range(k):
      b = (self.batch if batches is None else
           sharding.global_batch(next(batches), self.setup.mesh))
      self.params, self.opt, m = self.step_fn(self.params, self.opt,
                                              self.step, b)
    jax.block_until_ready(m)


def _pipeline(config, workdir):
  """A train iterator over real data (WORKDIR's, or a small fresh corpus)."""
  from sparse_circuits import data  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  if workdir is None:
    workdir = tempfile.mkdtemp(prefix="sparse_circuits_bench_")
    atexit.register(shutil.rmtree, workdir, True)
    config.data.max_corpus_bytes = 2_500_000
    config.data.tokenizer_max_bytes = 2_500_000
  info = data.prepare(config, workdir)
  return data.train_iterator(config, info, 0, 1)


def train_bench(config, workdir=None, with_torch=False, rounds=7,
                shares=True) -> dict:
  """Figures of the train step; see the module docstring. Without
  `shares`, only the step and the matmul ceiling are timed."""
  device = jax.devices()[0]
  on = _Stepper(config, device)
  contenders = {"step": on.run}
  if shares and config.model.afrac > 0:
    off_cfg = config.copy_and_resolve_references()
    off_cfg.model.afrac = 0.0
    off = _Stepper(off_cfg, device)
    contenders["step, afrac 0"] = off.run
  if shares and on.setup.plan is not None:
    plan, step = on.setup.plan, on.step
    project = jax.jit(lambda p: sparsity.project(p, plan, step))

    def run_project(k):  # reads on.params at each call: the step donates it
      out = None
      for _ in range(k):
        out = project(on.params)
      jax.block_until_ready(out)
    contenders["weight top-k alone"] = run_project
  if shares:
    it = _pipeline(config, workdir)
    contenders["step, real data"] = lambda k: on.run(k, it)
  torch_steps = {}
  if with_torch:
    from benchmarks import torch_step  # pylint: disable=g-import-not-at-top
    # torch's OpenMP threads suffer more than XLA's pool when the cores are
    # shared: time 1 thread and all cores, and compare with the faster.
    for n in sorted({1, os.cpu_count() or 1}):
      torch_steps[n] = torch_step.TorchStep(config, on.setup.plan, threads=n)
      contenders[f"torch step, {n} thread{'s' * (n > 1)}"] = torch_steps[n].run
  mm_run, mm_flops, mm_desc = matmul(device)
  contenders["matmul " + mm_desc] = mm_run
  t = race(contenders, rounds=rounds)
  ceiling = mm_flops / t.pop("matmul " + mm_desc)
  tokens = config.train.batch_size * config.model.block_size
  step_flops = flops.model_flops_per_token(config) * tokens
  out = dict(device=f"{device.platform} ({device.device_kind})",
             tokens_per_step=tokens, times=t, step_s=t["step"],
             tokens_per_s=tokens / t["step"],
             model_tflops=step_flops / t["step"] / 1e12,
             ceiling_tflops=ceiling / 1e12, ceiling_desc=mm_desc,
             mfu=step_flops / t["step"] / ceiling,
             n_params=flops.param_count(on.setup.cfg),
             n_active=flops.param_count(on.setup.cfg, matmul_only=True),
             flops_per_token=flops.model_flops_per_token(config),
             step_memory_gb=on.memory.per_device_bytes / 1e9,
             compile_s=on.memory.compile_seconds)
  if "weight top-k alone" in t:
    out["weight_topk_share"] = t["weight top-k alone"] / t["step"]
  if "step, afrac 0" in t:
    out["activation_topk_share"] = 1 - t["step, afrac 0"] / t["step"]
  if "step, real data" in t:
    out["pipeline_overhead"] = t["step, real data"] / t["step"] - 1
  if torch_steps:
    best = min((t[k], k) for k in t if k.startswith("torch"))
    out["torch_tokens_per_s"] = tokens / best[0]
    out["torch_best"] = best[1]
    out["speedup_vs_torch"] = best[0] / t["step"]
  return out


def format_train(config, r) -> str:
  rows = [
      f"config {config.get('name', '?')}: batch {config.train.batch_size} x "
      f"{config.model.block_size} tokens, {r['n_params'] / 1e6:.2f}M "
      f"parameters ({r['n_active'] / 1e6:.2f}M in matmuls), "
      f"{r['flops_per_token'] / 1e6:.1f} MFLOP/token, on "
      f"{r['device']}",
      f"  {config.train.microbatches} microbatch(es), remat "
      f"{config.model.remat}, compute "
      f"{config.model.compute_dtype}: train step needs "
      f"{r['step_memory_gb']:.2f} GB (XLA's peak estimate), compiled in "
      f"{r['compile_s']:.0f} s",
      f"{'':<34}{'ms/step':>10}{'tokens/s':>12}",
  ]
  for name, s in r["times"].items():
    toks = "" if "alone" in name else f"{r['tokens_per_step'] / s:>12,.0f}"
    rows.append(f"  {name:<32}{1e3 * s:>10.2f}{toks}")
  rows += [
      f"  {'model TFLOP/s':<32}{r['model_tflops']:>10.4f}",
      f"  {'matmul ceiling TFLOP/s':<32}{r['ceiling_tflops']:>10.4f}"
      f"  ({r['ceiling_desc']}, same device, same run)",
      f"  {'MFU':<32}{100 * r['mfu']:>9.1f}%",
  ]
  for key, label, target in (
      ("weight_topk_share", "weight top-k share of step", "<= 3%"),
      ("activation_topk_share", "activation top-k share", "<= 15%"),
      ("pipeline_overhead", "input pipeline overhead", "<= 3%")):
    if key in r:
      rows.append(f"  {label:<32}{100 * r[key]:>9.1f}%  (target {target})")
  if "speedup_vs_torch" in r:
    rows.append(f"  {'ours / torch tokens/s':<32}{r['speedup_vs_torch']:>9.2f}x"
                f"  (target >= 1.5x; vs the faster torch: "
                f"{r['torch_best']})")
  return "\n".join(rows)


# ------------------------------------------------------------------ top-k


def _approx_topk_mask(score, k):
  return sparsity.mask_at(jax.lax.approx_max_k(score, k)[1], score.shape)


METHODS = {"4-ary search (topk_mask)": sparsity.topk_mask,
           "bisection (reference)": sparsity.reference_topk_mask,
           "lax.top_k + scatter": sparsity.lax_topk_mask,
           "approx_max_k + scatter": _approx_topk_mask}


def topk_bench(config, rounds=5) -> list[tuple]:
  """(what, method, fwd ms, fwd+bwd ms or None, exact) rows."""
  cfg = model_lib.ModelConfig.from_config(config.model)
  rows = []
  setup = train.make_setup(config, jax.devices()[:1])
  params = model_lib.init_params(cfg, 0)
  if setup.plan is not None:
    flat = {sparsity.path_str(p): w for p, w in
            jax.tree_util.tree_flatten_with_path(params)[0]}
    mats = [(jnp.abs(flat[m.path]).reshape(1, -1), m.k_final)
            for m in setup.plan.matrices]
    want = [sparsity.topk_mask(s, k) for s, k in mats]
    fns, exact = {}, {}
    for name, method in METHODS.items():
      f = jax.jit(lambda ms, method=method: [
          method(s, k) for s, (_, k) in zip(ms, mats)])
      got = f([s for s, _ in mats])
      exact[name] = all(bool((g == w).all()) for g, w in zip(got, want))
      fns[name] = _runner(f, [s for s, _ in mats])
    t = race(fns, rounds=rounds)
    for name in METHODS:
      rows.append((f"weight projection, {len(mats)} matrices", name,
                   1e3 * t[name], None, exact[name]))
  n_rows = config.train.batch_size * config.model.block_size
  afrac = config.model.afrac or 0.25
  for width in sorted({cfg.d_model, cfg.d_mlp}):
    k = int(afrac * width)
    x = jax.random.normal(jax.random.key(1), (n_rows, width))
    want = sparsity.topk_mask(jnp.abs(x), k)
    fns, exact = {}, {}
    for name, method in METHODS.items():
      fwd = jax.jit(lambda x, m=method: jnp.where(m(jnp.abs(x), k), x, 0.0))
      bwd = jax.jit(jax.grad(lambda x, m=method: jnp.sum(
          jnp.where(m(jnp.abs(x), k), x, 0.0) * x)))
      exact[name] = bool((fwd(x) != 0).sum() == n_rows * k and
                         ((fwd(x) != 0) == want).all())
      fns[name] = _runner(fwd, x)
      fns[name + " bwd"] = _runner(bwd, x)
    t = race(fns, rounds=rounds)
    for name in METHODS:
      rows.append((f"activation rows {n_rows} x {width}, keep {k}", name,
                   1e3 * t[name], 1e3 * t[name + " bwd"], exact[name]))
  return rows


def _runner(f, *args):
  def run(k):
    out = None
    for _ in range(k):
      out = f(*args)
    jax.block_until_ready(out)
  return run


def format_topk(rows) -> str:
  out = [f"{'what':<42}{'method':<26}{'fwd ms':>9}{'fwd+bwd':>9}  exact"]
  for what, method, fwd, bwd, exact in rows:
    b = f"{bwd:>9.2f}" if bwd is not None else f"{'':>9}"
    out.append(f"{what:<42}{method:<26}{fwd:>9.2f}{b}  "
               f"{'yes' if exact else 'NO'}")
  return "\n".join(out)


# ------------------------------------------------------------------- A/B


@contextlib.contextmanager
def before_code():
  """Traces as the code did before the 4-ary search and the grouped
  projection: `reference_topk_mask` (a 31-step bisection on whole rows)
  everywhere and one search per matrix. Only what is traced inside it."""
  saved = sparsity.topk_mask, sparsity.project
  sparsity.topk_mask = sparsity.reference_topk_mask
  sparsity.project = functools.partial(saved[1], grouped=False)
  try:
    yield
  finally:
    sparsity.topk_mask, sparsity.project = saved


def _compiled(f, *args):
  """A runner of f compiled now (so inside `before_code` if called there)."""
  return _runner(jax.jit(f).lower(*args).compile(), *args)


def _same_bits(a, b) -> bool:
  return all(bool(np.array_equal(np.asarray(x), np.asarray(y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def ab_bench(config, with_torch=False, rounds=7) -> dict:
  """Before (`before_code`) and now, timed in the same interleaved rounds:
  the train step, the weight projection alone and AbsTopK on this config's
  activation rows; and whether one step from the same state gives the same
  bits."""
  device = jax.devices()[0]
  with before_code():
    old = _Stepper(config, device)
  new = _Stepper(config, device)
  old.run(1)
  new.run(1)
  same = _same_bits((old.params, old.opt), (new.params, new.opt))
  pairs = {"train step": (old.run, new.run)}
  plan = new.setup.plan
  if plan is not None:
    params = jax.tree.map(jnp.copy, new.params)  # the step donates its own

    def projection():
      return _compiled(lambda p: sparsity.project(p, plan, new.step), params)
    with before_code():
      before = projection()
    pairs[f"weight projection, {len(plan.matrices)} matrices"] = (
        before, projection())
  cfg = new.setup.cfg
  n_rows = config.train.batch_size * config.model.block_size
  for width in sorted({cfg.d_model, cfg.d_mlp}):
    x = jax.random.normal(jax.random.key(1), (n_rows, width))
    k = int((config.model.afrac or 0.25) * width)

    def abs_topk():
      return _compiled(lambda x: model_lib.abs_topk(x, k), x)
    with before_code():
      before = abs_topk()
    pairs[f"AbsTopK {n_rows} x {width}, keep {k}"] = (before, abs_topk())
  contenders = {}
  for name, (b, a) in pairs.items():
    contenders[name + ", before"] = b
    contenders[name + ", now"] = a
  if with_torch:
    from benchmarks import torch_step  # pylint: disable=g-import-not-at-top
    for n in sorted({1, os.cpu_count() or 1}):
      contenders[f"torch step, {n} thread{'s' * (n > 1)}"] = torch_step.TorchStep(
          config, plan, threads=n).run
  t = race(contenders, rounds=rounds)
  return dict(times=t, pairs=list(pairs), same_bits=same)


def format_ab(r) -> str:
  t = r["times"]
  rows = [f"{'':<40}{'before ms':>10}{'now ms':>10}{'speed-up':>10}"]
  for name in r["pairs"]:
    b, a = t[name + ", before"], t[name + ", now"]
    rows.append(f"  {name:<38}{1e3 * b:>10.2f}{1e3 * a:>10.2f}{b / a:>9.2f}x")
  torch = {k: v for k, v in t.items() if k.startswith("torch")}
  if torch:
    best = min(torch.values())
    for k, v in torch.items():
      rows.append(f"  {k:<38}{1e3 * v:>10.2f}")
    rows.append(f"  {'ours / faster torch (tokens/s)':<38}"
                f"{best / t['train step, before']:>9.2f}x"
                f"{best / t['train step, now']:>9.2f}x  (target >= 1.5x)")
  rows.append("  one step from the same state, before vs now: "
              + ("the same bits" if r["same_bits"] else "DIFFERENT BITS"))
  return "\n".join(rows)


# ------------------------------------------------------------------ prune


def _synthetic_task(config, n, length, seed=0):
  """Random prompts; pair i = rows 2i, 2i+1 with swapped candidates."""
  from sparse_circuits.tasks import binary as tasks_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  V = config.model.vocab_size

  def split(n):
    tokens = rng.integers(0, V, (n, length), dtype=np.int32)
    tokens[1::2, -1] = tokens[0::2, -1]  # a pair shares its last token
    a, b = 10 + np.arange(n // 2) % 7, 20 + np.arange(n // 2) % 5
    target = np.stack([a, b], 1).reshape(-1).astype(np.int32)
    alt = np.stack([b, a], 1).reshape(-1).astype(np.int32)
    return tasks_lib.TaskData(tokens, target, alt,
                              np.arange(n, dtype=np.int32) // 2, [""] * n)
  return tasks_lib.Task("synthetic", "random prompts", split(n), split(n))


def _prune_inputs(config, workdir):
  """(config, params, means, task, label): a trained run or a random model."""
  from sparse_circuits import checkpoints  # pylint: disable=g-import-not-at-top
  from sparse_circuits import sites as sites_lib  # pylint: disable=g-import-not-at-top
  from sparse_circuits.circuits import prune  # pylint: disable=g-import-not-at-top
  from sparse_circuits.tasks import binary as tasks_lib  # pylint: disable=g-import-not-at-top
  if workdir and checkpoints.latest_step(workdir) is not None:
    s = prune.setup(workdir, overlay=config)  # this config's prune, tasks
    config, cfg, params = s.run.config, s.run.cfg, s.run.params
    name = config.prune.tasks[0]
    task = tasks_lib.build_all(config, s.run.tokenizer, names=[name])[name]
    label = f"{name} on {workdir} (step {s.run.step})"
    means = {k: jnp.asarray(v) for k, v in s.means.items()}
    return config, cfg, params, means, task, s.sites, label
  else:
    cfg = runs.model_config(config)
    params = model_lib.init_params(cfg, config.seed)
    plan = train.make_setup(config, jax.devices()[:1]).plan
    if plan is not None:
      params = sparsity.project(params, plan, jnp.int32(config.train.num_steps))
    task = _synthetic_task(config, config.tasks.n_train, 48)
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, config.model.vocab_size,
                            (config.train.batch_size,
                             config.model.block_size + 1), dtype=np.int32)
               for _ in range(2)]
    label = "synthetic task on a random model"
  sites = sites_lib.node_sites(cfg)
  means = prune.compute_means(params, cfg, batches, sites)
  means = {k: jnp.asarray(v) for k, v in means.items()}
  return config, cfg, params, means, task, sites, label


def prune_bench(config, workdir=None, n_settings=8) -> dict:
  from sparse_circuits.circuits import prune  # pylint: disable=g-import-not-at-top
  from sparse_circuits.circuits import search  # pylint: disable=g-import-not-at-top
  config, cfg, params, means, task, sites, label = _prune_inputs(config,
                                                                 workdir)
  pc = config.prune
  if label.startswith("synthetic"):
    # A random model cannot reach the real target: aim just above its full
    # loss so that the k search does its usual ~log2(nodes) evaluations.
    p0 = search.Pruner(params, cfg, means, sites, pc)
    full = float(p0.scores(np.ones((1, p0.n_nodes), bool),
                           task.train).train[0])
    pc = pc.copy_and_resolve_references()
    pc.target_loss = full + 0.02
    label += f" (target loss {pc.target_loss:.3f} = full model + 0.02)"
  pruner = search.Pruner(params, cfg, means, sites, pc)
  start = time.perf_counter()
  res = prune.prune_task(pruner, task, progress=False)
  wall = time.perf_counter() - start
  n_grid = len(search.sweep_settings(pc))
  # Vectorised sweep: one step of S settings in one program vs S = 1.
  init_fn, step_fn, _ = search.programs(cfg, sites, pc)
  bs = 2 * min(pc.batch_size, len(task.train.target) // 2)
  tokens = jnp.asarray(task.train.tokens)
  last = search.read_positions(task.train)
  fns = {}
  for s in (1, n_settings):
    tau = jax.tree.map(lambda *x: jnp.stack(x), *[
        search.init_tau(sites, i, pc.init_mean, pc.init_std)
        for i in range(s)])
    state = {"tau": tau, "opt": init_fn(tau), "bad": jnp.zeros(s, bool)}
    hp = {f: jnp.full((s,), getattr(pc, f), jnp.float32)
          for f in ("k_coef", "lr", "temperature")}
    idx = jnp.tile(jnp.arange(bs, dtype=jnp.int32), (s, 1))
    labels = [jnp.tile(jnp.asarray(x), (s, 1))
              for x in (task.train.target, task.train.alternative)]

    def run(k, state=state, hp=hp, idx=idx, labels=labels):
      m = None
      for _ in range(k):
        state["tau"], state["opt"], state["bad"], m = step_fn(
            state["tau"], state["opt"], state["bad"], jnp.float32(0), idx,
            hp, tokens, last, *labels, params, means)
      jax.block_until_ready(m)
    fns[s] = run
  t = race(fns, rounds=5, seconds=0.3)
  return dict(label=label, search_s=res.search_seconds, wall_s=wall,
              grid=n_grid, steps=pc.steps, k=res.k, reached=res.reached,
              n_nodes=sum(s.width for s in sites), sweep_1_ms=1e3 * t[1],
              sweep_n_ms=1e3 * t[n_settings], n_settings=n_settings,
              sweep_ratio=t[n_settings] / t[1])


def format_prune(r) -> str:
  return "\n".join([
      f"prune, {r['label']}: mask training ({r['steps']} steps x "
      f"{r['grid']} settings, vectorised) + k search "
      f"{r['search_s']:.1f} s; whole prune_task {r['wall_s']:.1f} s; circuit "
      f"k={r['k']} of {r['n_nodes']} nodes"
      f"{'' if r['reached'] else ' (target loss not reached)'}",
      f"prune sweep: one step of {r['n_settings']} settings in one vmapped "
      f"program {r['sweep_n_ms']:.1f} ms vs 1 setting {r['sweep_1_ms']:.1f} "
      f"ms: {r['sweep_ratio']:.2f}x the time for {r['n_settings']}x the "
      f"settings (target <= 2x)"])


# ------------------------------------------------------------------ entry


def run(config, workdir=None, *, with_torch=False, topk=False,
        prune_too=True, rounds=7, shares=True, profile=0, ab=False):
  """The train figures (and the profile, top-k and prune lines), printed."""
  if workdir and not os.path.isdir(workdir):
    workdir = None
  out = {}
  if profile:  # with --ab: the code before too
    from benchmarks import step_profile  # pylint: disable=g-import-not-at-top
    for name, code in ((("before", before_code),) if ab else ()) + (
        ("now", contextlib.nullcontext),):
      with code():
        s = _Stepper(config, jax.devices()[0])
      out["profile " + name] = step_profile.profile(
          s.step_fn, s.run, profile, config.model.vocab_size)
      print(f"{name}: " + step_profile.format_profile(out["profile " + name],
                                                      profile), flush=True)
      del s
  if ab:
    out["ab"] = ab_bench(config, with_torch=with_torch, rounds=rounds)
    print(format_ab(out["ab"]), flush=True)
    return out
  r = train_bench(config, workdir, with_torch=with_torch, rounds=rounds,
                  shares=shares)
  print(format_train(config, r), flush=True)
  out["train"] = r
  if topk:
    rows = topk_bench(config)
    print(format_topk(rows), flush=True)
    out["topk"] = rows
  if prune_too:
    p = prune_bench(config, workdir)
    print(format_prune(p), flush=True)
    out["prune"] = p
  return out


def main():
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  cfg_flag = config_flags.DEFINE_config_file("config", "configs/tiny.py",
                                             "ml_collections config file.")
  torch_flag = flags.DEFINE_bool("torch", False, "Also time "
                                 "benchmarks.torch_step's PyTorch step in "
                                 "the same rounds.")
  topk_flag = flags.DEFINE_bool("topk", False, "Compare top-k methods.")
  prune_flag = flags.DEFINE_bool("prune", True, "Time pruning one task.")
  rounds_flag = flags.DEFINE_integer("rounds", 7, "Interleaved timing rounds "
                                     "(each figure is their median).", 1)
  shares_flag = flags.DEFINE_bool(
      "shares", True, "Also time the step with afrac 0, the weight top-k "
      "alone and the step on real data (the shares); --noshares times the "
      "step alone.")
  profile_flag = flags.DEFINE_integer(
      "profile", 0, "First profile this many steps (jax.profiler trace) "
      "and print where the step's time goes (benchmarks.step_profile).", 0)
  ab_flag = flags.DEFINE_bool(
      "ab", False, "Only time the code before the 4-ary top-k search and "
      "the grouped projection against now (`before_code`), pair by pair in "
      "the same rounds (and --torch), and check one step gives the same "
      "bits.")
  workdir_flag = flags.DEFINE_string(
      "workdir", None, "A run's workdir: its data feeds the pipeline figure "
      "and its checkpoint the prune figure (default: a small fresh corpus, a "
      "random model).")

  def _main(argv):
    del argv
    from sparse_circuits import config_lib  # pylint: disable=g-import-not-at-top
    from sparse_circuits import hostmem  # pylint: disable=g-import-not-at-top
    hostmem.keep_freed_memory()
    config_lib.validate(cfg_flag.value)
    run(cfg_flag.value, workdir_flag.value, with_torch=torch_flag.value,
        topk=topk_flag.value, prune_too=prune_flag.value,
        rounds=rounds_flag.value, shares=shares_flag.value,
        profile=profile_flag.value, ab=ab_flag.value)
  app.run(_main)


if __name__ == "__main__":
  main()

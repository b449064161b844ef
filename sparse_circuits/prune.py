"""`--mode=prune`: learn node masks on a trained model, find the smallest
circuit that keeps the task loss at the target, and check it (paper §2.2).

A program separate from training: it restores parameters only, never builds
the training optimizer, and hands the model a pytree of interventions
(x <- m*x + (1-m)*mean, m = H(tau)) keyed by site name.

Where the authors ran hundreds of sequential runs per task, every setting of
the sweep (k_coef, lr, temperature, init mean, seed) trains its masks in one
jitted, vmapped program, and the k search bisects every setting's node
ranking at once (one batched evaluation per round). What a sceptical reader
needs is part of every circuit (`controls.py`): the logit calibration
(positive scale, shift) is fitted on the train pairs and scored on the test
pairs; the selected setting is pruned again with other seeds; the same
prompts with labels drawn by a coin per pair, and a randomly initialised
model, are pruned the same way.
"""

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from sparse_circuits import circuit as circuit_lib
from sparse_circuits import controls
from sparse_circuits import model as model_lib

EVAL_CHUNK = 4  # node sets per evaluation call: bounds memory, one compile


# ---------------------------------------------------------------- masks

@jax.custom_vjp
def hard_step(tau, temperature):
  """H(tau) forward; sigmoid'(tau/T)/T backward (the straight-through)."""
  return (tau > 0).astype(tau.dtype)


def _hard_fwd(tau, temperature):
  return hard_step(tau, temperature), (tau, temperature)


def _hard_bwd(res, g):
  tau, t = res
  s = jax.nn.sigmoid(tau / t)
  return g * s * (1 - s) / t, jnp.zeros_like(t)


hard_step.defvjp(_hard_fwd, _hard_bwd)


def interventions(masks, means):
  return {s: {"mask": masks[s], "mean": means[s]} for s in masks}


def last_logits(params, cfg, tokens, masks=None, means=None):
  iv = interventions(masks, means) if masks is not None else None
  logits, _ = model_lib.forward(params, tokens, cfg, interventions=iv,
                                last_only=True)
  return logits[:, -1]


def logit_diff(params, cfg, data_tokens, target, alternative, masks=None,
               means=None):
  """d = logit[target] - logit[alternative] at the last position, [N]."""
  lg = last_logits(params, cfg, data_tokens, masks, means)
  return (jnp.take_along_axis(lg, target[:, None], 1)[:, 0] -
          jnp.take_along_axis(lg, alternative[:, None], 1)[:, 0])


# ---------------------------------------------------------------- means

def compute_means(params, cfg, batches, sites):
  """Mean activation of every node over pretraining batches, per site."""
  names = tuple(s.name for s in sites)

  @jax.jit
  def batch_sums(tokens):
    _, acts = model_lib.forward(params, tokens, cfg, capture=names)
    return {k: jnp.sum(v.astype(jnp.float32), axis=(0, 1))
            for k, v in acts.items()}

  total, count = None, 0
  for b in batches:
    tokens = jnp.asarray(b[:, :-1])
    sums = batch_sums(tokens)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    count += tokens.shape[0] * tokens.shape[1]
  return {k: np.asarray(v / count) for k, v in total.items()}


# ---------------------------------------------------------------- settings

@dataclasses.dataclass(frozen=True)
class Setting:
  k_coef: float
  lr: float
  temperature: float
  init_mean: float
  seed: int


HPARAMS = ("k_coef", "lr", "temperature", "init_mean")


def sweep_settings(pc) -> list[Setting]:
  """`pc.sweep_size` settings: the config's own values (seed 0), then a
  seeded Latin hypercube over the log ranges `pc.sweep_<name> = (lo, hi)`
  (one value fixes it); setting i has seed i. A Latin hypercube puts one
  sample in each 1/n-th of every range, which a grid of 16 cannot do in 4
  dimensions."""
  n = int(pc.sweep_size)
  rng = np.random.default_rng(pc.sweep_seed)
  cols = {}
  for f in HPARAMS:
    r = tuple(pc[f"sweep_{f}"])
    lo, hi = np.log(r[0]), np.log(r[-1])
    u = (rng.permutation(n - 1) + rng.uniform(size=n - 1)) / max(n - 1, 1)
    cols[f] = np.exp(lo + u * (hi - lo))
  first = Setting(*(float(pc[f]) for f in HPARAMS), seed=0)
  return [first] + [Setting(*(float(cols[f][i]) for f in HPARAMS), seed=i + 1)
                    for i in range(n - 1)]


def init_tau(sites, seed, mean=0.1, std=0.01):
  key = jax.random.key(seed)
  keys = jax.random.split(key, len(sites))
  return {s.name: mean + std * jax.random.normal(k, (s.width,))
          for s, k in zip(sites, keys)}


# ---------------------------------------------------------------- programs

def calibration_sign(target, alternative):
  """+1 where the target is the lower token id: the shift b of the
  calibration raises one candidate's logit over the other's."""
  return jnp.where(jnp.asarray(target) < jnp.asarray(alternative), 1.0, -1.0)


@functools.partial(jax.jit, static_argnames="steps")
def fit_calibration(d_MxN, sign_MxN, steps=16):
  """Per row, (a, b) with a = exp(u) > 0 minimising mean softplus(-(a*d +
  b*sign)) by LBFGS from (1, 0), kept only where it beats (1, 0). A positive
  scale can sharpen or soften the circuit's answer but never turn it round."""
  def one(d, sign):
    def f(p):
      return jnp.mean(jax.nn.softplus(-(jnp.exp(p[0]) * d + p[1] * sign)))
    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(f)

    def body(_, carry):
      p, state = carry
      v, g = vg(p, state=state)
      u, state = opt.update(g, state, p, value=v, grad=g, value_fn=f)
      return optax.apply_updates(p, u), state

    p0 = jnp.zeros(2)
    p, _ = jax.lax.fori_loop(0, steps, body, (p0, opt.init(p0)))
    better = jnp.all(jnp.isfinite(p)) & (f(p) < f(p0))
    p = jnp.where(better, p, p0)
    return jnp.stack([jnp.exp(p[0]), p[1]])
  return jax.vmap(one)(d_MxN, sign_MxN)


def bce(d_MxN, ab_Mx2=None, sign_MxN=None):
  """Task loss per row; with (a, b), of the calibrated a*d + b*sign."""
  d = jnp.asarray(d_MxN)
  if ab_Mx2 is not None:
    ab = jnp.asarray(ab_Mx2)
    d = ab[:, :1] * d + ab[:, 1:] * jnp.asarray(sign_MxN)
  return np.asarray(jnp.mean(jax.nn.softplus(-d), -1))


@functools.lru_cache(maxsize=8)
def _programs(cfg, sites, clip, b2, weight_decay):
  """The jitted mask-training step (vmapped over settings) and evaluation
  (vmapped over node sets), cached per model shape and optimizer so that
  every task, setting and control shares one compilation per input shape.
  The model, means and task arrays are arguments, not constants: as
  constants XLA constant-folds the unmasked forward at compile time."""
  tx = optax.chain(optax.clip_by_global_norm(clip),
                   optax.scale_by_adam(b1=0.9, b2=b2))
  widths = [s.width for s in sites]

  def loss_fn(tau, hp, tokens, target, alt, params, means):
    masks = {s: hard_step(t, hp["temperature"]) for s, t in tau.items()}
    d = logit_diff(params, cfg, tokens, target, alt, masks, means)
    task = jnp.mean(jax.nn.softplus(-d))
    n_on = sum(jnp.sum(m) for m in masks.values())
    return task + hp["k_coef"] * n_on, (task, n_on)

  def step(tau, opt_state, bad, frac, idx, hp, tokens, target, alt, params,
           means):
    (_, (task, n_on)), g = jax.value_and_grad(loss_fn, has_aux=True)(
        tau, hp, tokens[idx], target[idx], alt[idx], params, means)
    u, new_opt = tx.update(g, opt_state)
    lr = hp["lr"] * (1.0 - frac)
    new_tau = jax.tree.map(
        lambda t, u: jnp.clip(t - lr * (u + weight_decay * t), -1, 1), tau, u)
    # NaN-safe: a setting whose step is not finite keeps its last masks and
    # is marked; it cannot disturb the others (nothing is shared).
    ok = jnp.isfinite(task) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(t)) for t in jax.tree.leaves(new_tau)]))
    keep = lambda new, old: jnp.where(ok, new, old)
    return (jax.tree.map(keep, new_tau, tau),
            jax.tree.map(keep, new_opt, opt_state), bad | ~ok,
            {"task_loss": task, "nodes": n_on})

  def diffs(flat_CxN, tokens, target_CxR, alt_CxR, params, means):
    def one(flat, target, alt):
      parts = jnp.split(flat, np.cumsum(widths)[:-1])
      masks = {s.name: p for s, p in zip(sites, parts)}
      return logit_diff(params, cfg, tokens, target, alt, masks, means)
    return jax.vmap(one)(flat_CxN, target_CxR, alt_CxR)

  return (jax.jit(jax.vmap(tx.init)),
          jax.jit(jax.vmap(step, in_axes=(0, 0, 0, None, 0, 0, None, 0, 0,
                                          None, None)),
                  donate_argnums=(0, 1)),
          jax.jit(diffs))


class Pruner:
  """Mask training and node-set evaluation on one model (params, means)."""

  def __init__(self, params, cfg, means, sites, pc):
    self.params, self.cfg, self.sites, self.pc = params, cfg, sites, pc
    self.means = {k: jnp.asarray(v) for k, v in means.items()}
    self.n_nodes = int(sum(s.width for s in sites))
    self._init, self._step, self._diffs = _programs(
        cfg, tuple(sites), float(pc.clip), float(pc.b2),
        float(pc.weight_decay))

  def train(self, data, settings, labels=None, progress=True):
    """Trains one tau per setting, all in one program. labels: per setting
    (target, alternative) arrays (the nonsense control); default the task's.
    Returns (flat tau [S, n_nodes], last metrics, diverged [S])."""
    pc, sites = self.pc, self.sites
    target, alt = self._labels(data, len(settings), labels)
    n_pairs = len(data.target) // 2
    bs = min(pc.batch_size, n_pairs)
    tau = jax.tree.map(lambda *x: jnp.stack(x), *[
        init_tau(sites, s.seed, s.init_mean, pc.init_std) for s in settings])
    opt_state = self._init(tau)
    bad = jnp.zeros(len(settings), bool)
    hp = {f: jnp.asarray([getattr(s, f) for s in settings], jnp.float32)
          for f in ("k_coef", "lr", "temperature")}
    # Each setting draws its own batches from its seed, so a setting trains
    # the same alone as in a stack.
    rngs = [np.random.default_rng([s.seed, pc.seed]) for s in settings]
    tokens = jnp.asarray(data.tokens)
    m = None
    for step in tqdm(range(pc.steps), desc=f"masks x{len(settings)}",
                     disable=not progress, leave=False):
      pairs = np.stack([r.choice(n_pairs, bs, replace=False) for r in rngs])
      idx = np.stack([2 * pairs, 2 * pairs + 1], -1).reshape(len(rngs), -1)
      tau, opt_state, bad, m = self._step(
          tau, opt_state, bad, jnp.float32(step / pc.steps), jnp.asarray(idx),
          hp, tokens, target, alt, self.params, self.means)
    flat = np.concatenate([np.asarray(tau[s.name]) for s in sites], 1)
    return flat, jax.device_get(m), np.asarray(bad)

  def _labels(self, data, n, labels):
    if labels is None:
      labels = [(data.target, data.alternative)] * n
    return (jnp.asarray(np.stack([t for t, _ in labels]), jnp.int32),
            jnp.asarray(np.stack([a for _, a in labels]), jnp.int32))

  def diffs(self, keep_MxN, data, labels=None):
    """Logit differences [M, rows] with everything outside each node set
    mean-ablated; EVAL_CHUNK node sets per call."""
    keep = np.asarray(keep_MxN, np.float32).reshape(-1, self.n_nodes)
    target, alt = self._labels(data, len(keep), labels)
    tokens, out = jnp.asarray(data.tokens), []
    for i in range(0, len(keep), EVAL_CHUNK):
      sl = slice(i, i + EVAL_CHUNK)
      pad = EVAL_CHUNK - len(keep[sl])
      chunk = [np.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), mode="edge")
               for x in (keep[sl], np.asarray(target[sl]),
                         np.asarray(alt[sl]))]
      d = self._diffs(*map(jnp.asarray, chunk[:1]), tokens,
                      *map(jnp.asarray, chunk[1:]), self.params, self.means)
      out.append(np.asarray(d)[:EVAL_CHUNK - pad])
    return np.concatenate(out) if out else np.zeros((0, len(data.target)))

  def scores(self, keep_MxN, train, test, labels=None, test_labels=None):
    """Losses of node sets: calibration fitted on train, applied to test."""
    keep = np.asarray(keep_MxN).reshape(-1, self.n_nodes)
    d_tr = self.diffs(keep, train, labels)
    return self._scores(d_tr, keep, train, test, labels, test_labels)

  def _scores(self, d_tr, keep, train, test, labels, test_labels):
    s_tr = self._signs(train, len(keep), labels)
    ab = (np.asarray(fit_calibration(d_tr, s_tr)) if self.pc.calibrate
          else np.tile([1.0, 0.0], (len(keep), 1)))
    out = {"train_raw": bce(d_tr), "train": bce(d_tr, ab, s_tr), "ab": ab}
    if test is not None:
      d_te = self.diffs(keep, test, test_labels)
      s_te = self._signs(test, len(keep), test_labels)
      out.update(test_raw=bce(d_te), test=bce(d_te, ab, s_te))
    return out

  def _signs(self, data, n, labels):
    t, a = self._labels(data, n, labels)
    return np.asarray(calibration_sign(t, a))

  def search(self, tau_SxN, train, target_loss, labels=None):
    """For every setting at once, the smallest k whose top-k nodes by tau
    reach the target (calibrated, fitted on these train pairs). Bisects
    from the trained circuit (tau > 0), one batched evaluation per round.
    Returns orders, k, the train loss at k, reached, and the calibration
    inputs at k."""
    S, n = tau_SxN.shape
    tau = np.where(np.isfinite(tau_SxN), tau_SxN, -np.inf)
    order = np.argsort(-tau, axis=1, kind="stable")
    lab = labels or [(train.target, train.alternative)] * S

    def losses(rows, ks):
      keep = np.stack([keep_flat(order[r], k, n) for r, k in zip(rows, ks)])
      d = self.diffs(keep, train, [lab[r] for r in rows])
      s = self._signs(train, len(rows), [lab[r] for r in rows])
      ab = (np.asarray(fit_calibration(d, s)) if self.pc.calibrate
            else np.tile([1.0, 0.0], (len(rows), 1)))
      return bce(d, ab, s), d

    k_pos = np.minimum((tau > 0).sum(1), n)
    lo, hi = np.full(S, -1), np.full(S, n)
    best = np.full(S, np.inf)
    best_d = np.zeros((S, len(train.target)))
    rows = np.arange(S)
    l, d = losses(rows, k_pos)
    ok = l <= target_loss
    hi[ok], best[ok], best_d[ok] = k_pos[ok], l[ok], d[ok]
    lo[~ok] = k_pos[~ok]
    fail = np.nonzero(~ok)[0]
    fallback = {int(r): (k_pos[r], l[i], d[i]) for i, r in enumerate(rows)}
    if len(fail):  # does the whole model reach it?
      l, d = losses(fail, np.full(len(fail), n))
      for i, r in enumerate(fail):
        if l[i] <= target_loss:
          best[r], best_d[r] = l[i], d[i]
        else:
          lo[r] = n  # never reached: nothing to bisect
          if l[i] < fallback[r][1]:
            fallback[r] = (n, l[i], d[i])
    while True:
      active = np.nonzero(hi - lo > 1)[0]
      if not len(active):
        break
      mid = (lo[active] + hi[active]) // 2
      l, d = losses(active, mid)
      for i, r in enumerate(active):
        if l[i] <= target_loss:
          hi[r], best[r], best_d[r] = mid[i], l[i], d[i]
        else:
          lo[r] = mid[i]
    reached = np.isfinite(best)
    k = np.where(reached, hi, [fallback[r][0] for r in range(S)])
    loss = np.where(reached, best, [fallback[r][1] for r in range(S)])
    d_at_k = np.stack([best_d[r] if reached[r] else fallback[r][2]
                       for r in range(S)])
    return dict(order=order, k=k.astype(int), train_loss=loss,
                reached=reached, d_train=d_at_k, k_trained=k_pos)


def keep_flat(order, k, n):
  out = np.zeros(n, bool)
  out[order[:int(k)]] = True
  return out


def split_sites(flat, sites):
  """Flat node vector -> {site name: [width]} in forward order."""
  parts = np.split(np.asarray(flat), np.cumsum([s.width for s in sites])[:-1])
  return {s.name: p for s, p in zip(sites, parts)}


class Evaluator:
  """The selected circuit's test losses, for node annotations: the
  calibration stays the circuit's (fitted on train)."""

  def __init__(self, pruner, test, ab):
    self.pruner, self.test, self.ab = pruner, test, np.asarray(ab)

  def losses(self, keeps):
    """Calibrated test loss of each node set (site -> bool dicts)."""
    flat = np.stack([np.concatenate([k[s.name] for s in self.pruner.sites])
                     for k in keeps])
    d = self.pruner.diffs(flat, self.test)
    s = self.pruner._signs(self.test, len(flat), None)
    return bce(d, np.tile(self.ab, (len(flat), 1)), s)

  def loss(self, keep):
    return float(self.losses([keep])[0])


# ---------------------------------------------------------------- one task

def prune_task(pruner, task, progress=True, settings=None):
  """Sweep, select, confirm and control one task. Returns the kept nodes
  (site -> bool), tau, and every block of the circuit.json schema."""
  pc, n = pruner.pc, pruner.n_nodes
  settings = settings or sweep_settings(pc)
  t0 = time.perf_counter()
  tau, last, bad = pruner.train(task.train, settings, progress=progress)
  sr = pruner.search(tau, task.train, pc.target_loss)
  keep = np.stack([keep_flat(o, k, n) for o, k in zip(sr["order"], sr["k"])])
  s_tr = pruner._signs(task.train, len(settings), None)
  ab = (np.asarray(fit_calibration(sr["d_train"], s_tr)) if pc.calibrate
        else np.tile([1.0, 0.0], (len(settings), 1)))
  d_te = pruner.diffs(keep, task.test)
  s_te = pruner._signs(task.test, len(settings), None)
  test_cal, test_raw = bce(d_te, ab, s_te), bce(d_te)
  ok = sr["reached"] & ~bad
  confirmed = ok & (test_cal <= pc.target_loss)
  # Smallest circuit reaching the target on train, confirmed on test.
  rank = sorted(range(len(settings)), key=lambda i: (
      not confirmed[i], not ok[i], bool(bad[i]), sr["k"][i],
      sr["train_loss"][i]))
  sel = rank[0]
  search_s = time.perf_counter() - t0
  sweep = [{"setting": dataclasses.asdict(s), "diverged": bool(bad[i]),
            "final_task_loss": float(last["task_loss"][i]),
            "final_nodes": float(last["nodes"][i]),
            "nodes": int(sr["k"][i]), "train_loss": float(sr["train_loss"][i]),
            "test_loss": float(test_cal[i]),
            "test_loss_uncalibrated": float(test_raw[i]),
            "reached_train": bool(ok[i]), "reached_test": bool(confirmed[i])}
           for i, s in enumerate(settings)]
  circuit = keep[sel]
  seeds = controls.stability_and_nonsense(
      pruner, task, settings[sel], circuit, len(settings), progress)

  all_on = np.ones((1, n), bool)
  ks = sorted(set(np.unique(np.round(np.geomspace(1, n, 12))).astype(int)) |
              {int(sr["k"][sel])})
  curve_keep = np.stack([keep_flat(sr["order"][sel], k, n) for k in ks])
  curve = pruner.scores(curve_keep, task.train, task.test)
  full = pruner.scores(all_on, task.train, task.test)
  ablated = bce(pruner.diffs(~circuit[None], task.test))[0]
  losses = {"full_model": float(full["test_raw"][0]),
            "circuit": float(test_cal[sel]),
            "circuit_uncalibrated": float(test_raw[sel]),
            "circuit_train": float(sr["train_loss"][sel]),
            "circuit_ablated": float(ablated), "target": pc.target_loss}
  reached = {"train": bool(ok[sel]),
             "test_calibrated": bool(test_cal[sel] <= pc.target_loss),
             "test_uncalibrated": bool(test_raw[sel] <= pc.target_loss)}
  return dict(
      keep=split_sites(circuit, pruner.sites),
      tau=split_sites(tau[sel], pruner.sites), setting=sweep[sel]["setting"],
      k=int(sr["k"][sel]),
      reached=reached["test_calibrated" if pc.calibrate else
                      "test_uncalibrated"],
      target_reached=reached, selected=sel, search_seconds=search_s,
      sweep=sweep, losses=losses,
      calibration={"scale": float(ab[sel][0]), "shift": float(ab[sel][1]),
                   "fitted_on": "train"},
      loss_vs_k=[{"k": int(k), "loss": float(c), "loss_uncalibrated": float(r)}
                 for k, c, r in zip(ks, curve["test"], curve["test_raw"])],
      stability=seeds["stability"], nonsense_control=seeds["nonsense"],
      seed_counts=split_sites(seeds["counts"], pruner.sites),
      evaluator=Evaluator(pruner, task.test, ab[sel]))


# ---------------------------------------------------------------- controls

def random_pruner(config, cfg, batches, pc, sites):
  """A randomly initialised model of the same shape (sparsified as training
  leaves it) with its own means, for the random-init control."""
  from sparse_circuits import sparsity  # pylint: disable=g-import-not-at-top
  from sparse_circuits import train  # pylint: disable=g-import-not-at-top
  rand = model_lib.init_params(cfg, config.seed + 1)
  setup_plan = train.make_setup(config).plan
  if setup_plan is not None:
    rand = sparsity.project(rand, setup_plan, jnp.int32(config.train.num_steps))
  means = compute_means(rand, cfg, batches, sites)
  return Pruner(rand, cfg, means, sites, pc)


def random_control(pruner, task, res):
  """The same pruning (the setting that won on the trained model) on the
  random model; same programs, since the model is an argument."""
  setting = Setting(**res["setting"])
  tau, _, bad = pruner.train(task.train, [setting], progress=False)
  sr = pruner.search(tau, task.train, pruner.pc.target_loss)
  keep = keep_flat(sr["order"][0], sr["k"][0], pruner.n_nodes)[None]
  sc = pruner._scores(sr["d_train"][:1], keep, task.train, task.test, None,
                      None)
  full = pruner.scores(np.ones_like(keep), task.train, task.test)
  return {"loss": float(sc["test"][0]), "train_loss": float(sc["train"][0]),
          "k": int(sr["k"][0]),
          "reached": bool(sr["reached"][0] and not bad[0]),
          "full_model": float(full["test_raw"][0])}


# ---------------------------------------------------------------- the mode

def _merged_config(config, workdir):
  """The run's own config (model, data) with this invocation's prune/tasks."""
  from sparse_circuits import checkpoints  # pylint: disable=g-import-not-at-top
  run_cfg = checkpoints.load_config(workdir)
  with run_cfg.unlocked():
    run_cfg.prune = config.prune
    run_cfg.tasks = config.tasks
    if config.data.tokenizer_dir:
      run_cfg.data.tokenizer_dir = config.data.tokenizer_dir
  return run_cfg


def task_names(tasks):
  """config.prune.tasks -> (names or None for all, learned?). Entries may
  hold several comma-separated names; "learned" alone selects by accuracy."""
  names = [n.strip() for t in tasks for n in str(t).split(",") if n.strip()]
  if "learned" in names:
    if len(names) > 1:
      raise ValueError('config.prune.tasks: "learned" cannot be combined '
                       f"with task names, got {names}")
    return None, True
  if not names:
    raise ValueError("config.prune.tasks names no task")
  return names, False


def choose_tasks(all_tasks, pc, params, cfg, workdir, step, learned):
  """{name: {"status": "pruned" | "skipped", "reason", "accuracy"}}. With
  "learned", a task is pruned when the model gets >= prune.min_accuracy of
  its test pairs right (from eval_summary.json of this step, else
  evaluated here): a circuit for a task the model cannot do explains
  nothing."""
  from sparse_circuits import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  if not learned:
    return {n: {"status": "pruned", "reason": "asked for"} for n in all_tasks}
  acc = {}
  path = os.path.join(workdir, "eval_summary.json")
  if os.path.exists(path):
    with open(path) as f:
      summary = json.load(f)
    if summary.get("step") == int(step):
      acc = {k: v["accuracy"] for k, v in summary.get("tasks", {}).items()}
  plan = {}
  for name, task in all_tasks.items():
    a = acc.get(name)
    if a is None:
      a = tasks_lib.evaluate_task(params, cfg, task.test)["accuracy"]
    if a >= pc.min_accuracy:
      plan[name] = {"status": "pruned", "accuracy": a,
                    "reason": f"accuracy {a:.3f} >= {pc.min_accuracy}"}
    else:
      plan[name] = {"status": "skipped", "accuracy": a,
                    "reason": f"accuracy {a:.3f} < prune.min_accuracy "
                              f"{pc.min_accuracy}: the model has not "
                              "learned it"}
  return plan


def run(config, workdir: str):
  """`--mode=prune`: one circuit.json per task of config.prune.tasks
  ("learned": every task the model gets >= prune.min_accuracy right), and
  circuits/prune_summary.json. The means, the tokenized tasks and the
  compiled programs are shared by every task."""
  from sparse_circuits import checkpoints  # pylint: disable=g-import-not-at-top
  from sparse_circuits import data  # pylint: disable=g-import-not-at-top
  from sparse_circuits import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from sparse_circuits import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  from sparse_circuits import train  # pylint: disable=g-import-not-at-top
  config = _merged_config(config, workdir)
  pc = config.prune
  cfg = train.model_config(config)
  setup = train.make_setup(config)
  params, step = checkpoints.restore_params(workdir, setup.abstract_params)
  info = data.prepare(config, workdir, reuse=True)
  tok = tok_lib.load(info.tokenizer_dir)
  sites = circuit_lib.node_sites(cfg)
  batches = data.eval_batches(config, info, pc.mean_batches)
  means_path = os.path.join(workdir, "prune", f"means_{step}.npz")
  if os.path.exists(means_path):
    means = dict(np.load(means_path))
  else:
    means = compute_means(params, cfg, batches, sites)
    os.makedirs(os.path.dirname(means_path), exist_ok=True)
    np.savez(means_path, **means)
  names, learned = task_names(pc.tasks)
  all_tasks = tasks_lib.build_all(config, tok, names=names)
  plan = choose_tasks(all_tasks, pc, params, cfg, workdir, step, learned)
  pruner = Pruner(params, cfg, means, sites, pc)
  rand = (random_pruner(config, cfg, batches, pc, sites)
          if pc.random_control else None)
  heldout = data.eval_batches(config, info, 1)[0]
  paths = []
  for name, entry in plan.items():
    if entry["status"] != "pruned":
      print(f"{name}: skipped, {entry['reason']}")
      continue
    task = all_tasks[name]
    t0 = time.perf_counter()
    res = prune_task(pruner, task)
    control = random_control(rand, task, res) if rand is not None else None
    doc = circuit_lib.document(
        params, cfg, task, res, means, control, tok, heldout=heldout,
        model_info={"workdir": os.path.abspath(workdir), "step": int(step),
                    "config": config.model.to_dict()},
        prune_config=pc.to_dict())
    doc["prune_seconds"] = time.perf_counter() - t0
    doc["flags"] = controls.flags(doc)
    out_dir = os.path.join(workdir, "circuits", name)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "circuit.json")
    with open(path, "w") as f:
      json.dump(doc, f, indent=1, default=_json_default)
    paths.append(path)
    entry.update(controls.summary_row(doc))
    print(controls.summary_line(name, doc, path))
  controls.write_summary(workdir, plan, pc)
  return paths


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, (np.bool_,)):
    return bool(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(type(o))

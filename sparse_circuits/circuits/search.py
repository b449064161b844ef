"""The vectorised pruning search (paper §2.2, run as one program instead of
the authors' hundreds of sequential runs).

- `sweep_settings`: the settings (k_coef, lr, temperature, init mean, seed),
  the config's own first, then a seeded Latin hypercube over log ranges.
- `Pruner.train`: every setting's node masks trained at once by one jitted
  program vmapped over settings; NaN-safe (a diverging setting is frozen and
  marked, the others go on). Labels are per setting, so a control task
  (nonsense labels) trains in the same program as the real one.
- `Pruner.search`: for every setting at once, bisection of its node ranking
  for the smallest circuit reaching the target on the train pairs; each
  round is one batched evaluation of all settings' candidate node sets.
- `fit_calibration`: the logit calibration, a positive scale and a shift,
  fitted on train pairs; `Pruner.scores` applies it to test pairs.

The jitted programs are cached per model shape and take the model, means and
task arrays as arguments, so every task, setting and control (including the
random-init model) shares one compilation per input shape.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from sparse_circuits import sites as sites_lib
from sparse_circuits.tasks import scoring

EVAL_CHUNK = 4  # node sets per evaluation call at most
# Token positions (node sets x prompts x length) per evaluation call at most:
# an evaluation's memory grows with them. The main job's first evaluation of
# 4 node sets x 512 prompts x 39 positions (80k) took a 0.72 GB temporary
# buffer, the largest of the whole job, which set its peak (docs/results.md,
# "Main job memory"); at 2**16 it takes 2 node sets a call.
EVAL_TOKENS = 2 ** 16


def call_rows(n_left: int, tokens_per_set: int = 0) -> int:
  """Node sets one evaluation call computes when n_left remain: the largest
  power of two that fits, at most EVAL_CHUNK and, given each set's token
  positions, at most EVAL_TOKENS positions (but one set at least), so
  nothing is ever padded. (Padding a lone node set to EVAL_CHUNK cost 4x
  its work, and the k search mostly probes one or two settings a round.)
  At most three shapes per data split, compiled once each."""
  cap = min(n_left, EVAL_CHUNK)
  if tokens_per_set:
    cap = min(cap, max(1, EVAL_TOKENS // tokens_per_set))
  rows = 1
  while rows * 2 <= cap:
    rows *= 2
  return rows


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

def fit_calibration(d_MxN, sign_MxN):
  """Per row, (a, b) with a = exp(u) > 0 minimising mean softplus(-(a*d +
  b*sign)) by 16 LBFGS steps from (1, 0), kept only where it beats (1, 0).
  A positive scale can sharpen or soften the circuit's answer but never
  turn it round. Fitted EVAL_CHUNK rows per call: one compilation."""
  d, sign = np.asarray(d_MxN, np.float32), np.asarray(sign_MxN, np.float32)
  out = []
  for i in range(0, len(d), EVAL_CHUNK):
    pad = EVAL_CHUNK - len(d[i:i + EVAL_CHUNK])
    chunk = [np.pad(x[i:i + EVAL_CHUNK], [(0, pad), (0, 0)], mode="edge")
             for x in (d, sign)]
    out.append(np.asarray(_fit(*chunk))[:EVAL_CHUNK - pad])
  return np.concatenate(out) if out else np.zeros((0, 2))


@functools.partial(jax.jit, static_argnames="steps")
def _fit(d_MxN, sign_MxN, steps=16):
  def one(d, sign):
    def f(p):
      return jnp.mean(scoring.task_loss(
          scoring.calibrate(d, jnp.exp(p[0]), p[1], sign)))
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
  d = np.asarray(d_MxN, np.float64)
  if ab_Mx2 is not None:
    ab = np.asarray(ab_Mx2, np.float64)
    d = scoring.calibrate(d, ab[:, :1], ab[:, 1:], np.asarray(sign_MxN))
  return np.mean(scoring.task_loss(d, np), -1)


def read_positions(data):
  """Where each prompt of task data ends (`TaskData.last`, right-padded
  prompts); None for data without it, read at the final column."""
  last = getattr(data, "last", None)
  return None if last is None else jnp.asarray(last, jnp.int32)


@functools.lru_cache(maxsize=8)
def _programs(cfg, sites, clip, b2, weight_decay):
  """The jitted mask-training step (vmapped over settings) and evaluation
  (vmapped over node sets), cached per model shape and optimizer so that
  every task, setting and control shares one compilation per input shape.
  The model, means and task arrays are arguments, not constants: as
  constants XLA constant-folds the unmasked forward at compile time."""
  # The task loss (scoring.logit_diff) and the straight-through step
  # (scoring.hard_step) are shared with tasks and prune.
  tx = optax.chain(optax.clip_by_global_norm(clip),
                   optax.scale_by_adam(b1=0.9, b2=b2))
  index = sites_lib.NodeIndex(sites)

  def loss_fn(tau, hp, tokens, last, target, alt, params, means):
    masks = {s: scoring.hard_step(t, hp["temperature"])
             for s, t in tau.items()}
    d = scoring.logit_diff(params, cfg, tokens, target, alt, masks, means,
                           last)
    task = jnp.mean(scoring.task_loss(d))
    n_on = sum(jnp.sum(m) for m in masks.values())
    return task + hp["k_coef"] * n_on, (task, n_on)

  def step(tau, opt_state, bad, frac, idx, hp, tokens, last, target, alt,
           params, means):
    (_, (task, n_on)), g = jax.value_and_grad(loss_fn, has_aux=True)(
        tau, hp, tokens[idx], None if last is None else last[idx],
        target[idx], alt[idx], params, means)
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

  def diffs(flat_CxN, tokens, last, target_CxR, alt_CxR, params, means):
    def one(flat, target, alt):
      masks = index.split(flat)
      return scoring.logit_diff(params, cfg, tokens, target, alt, masks,
                                means, last)
    return jax.vmap(one)(flat_CxN, target_CxR, alt_CxR)

  return (jax.jit(jax.vmap(tx.init)),
          jax.jit(jax.vmap(step, in_axes=(0, 0, 0, None, 0, 0, None, None,
                                          0, 0, None, None)),
                  donate_argnums=(0, 1)),
          jax.jit(diffs))


def programs(cfg, sites, pc):
  """(init, step, diffs): the jitted programs for this model shape and
  pc's optimizer (for ahead-of-time compilation, see compile_check)."""
  return _programs(cfg, tuple(sites), float(pc.clip), float(pc.b2),
                   float(pc.weight_decay))


@dataclasses.dataclass(frozen=True, eq=False)
class Scores:
  """Task losses of M node sets (`Pruner.scores`), each [M]: raw and
  calibrated on the train pairs, where the calibration `ab` [M, 2] (scale,
  shift) is fitted, and on the test pairs with that calibration."""
  train_raw: np.ndarray
  train: np.ndarray
  ab: np.ndarray
  test_raw: np.ndarray | None = None
  test: np.ndarray | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class SearchResult:
  """The k search's answer per setting (`Pruner.search`), each [S, ...]."""
  order: np.ndarray       # [S, n] nodes by decreasing tau
  k: np.ndarray           # smallest circuit reaching the target, else the
  #                         better of the trained circuit and all nodes
  keep: np.ndarray        # [S, n] the top-k nodes
  train_loss: np.ndarray  # calibrated train loss at k
  reached: np.ndarray     # the target reached on the train pairs
  exact: np.ndarray       # k is the bisection's answer (else an upper bound)
  d_train: np.ndarray     # [S, N] train logit differences at k
  k_trained: np.ndarray   # nodes with tau > 0


class Pruner:
  """Mask training and node-set evaluation on one model (params, means)."""

  def __init__(self, params, cfg, means, sites, pc):
    """means: each node's mean activation; an ablated node takes it, or 0
    under pc.ablation = "zero" (`self.means` holds what it takes)."""
    self.params, self.cfg, self.sites, self.pc = params, cfg, sites, pc
    self.means = {k: jnp.asarray(v) for k, v in sites_lib.ablation_values(
        means, pc.get("ablation", sites_lib.MEAN)).items()}
    self.index = sites_lib.NodeIndex(sites)  # flat <-> per site <-> ids
    self.n_nodes = self.index.n
    self._init, self._step, self._diffs = programs(cfg, sites, pc)

  def train(self, data, settings, labels=None, progress=True):
    """Trains one tau per setting, all in one program. labels: per setting
    (target, alternative) arrays (the nonsense control); default the task's.
    Returns (flat tau [S, n_nodes], last metrics, diverged [S])."""
    pc, sites = self.pc, self.sites
    target, alt = map(jnp.asarray, self._labels(data, len(settings), labels))
    n_pairs = len(data.target) // 2
    bs = min(pc.batch_size, n_pairs)
    tau = jax.tree.map(lambda *x: jnp.stack(x), *[
        init_tau(sites, s.seed, s.init_mean, pc.init_std) for s in settings])
    bad = jnp.zeros(len(settings), bool)
    # The step returns what it carries (tau, optimizer state, bad) on the
    # parameters' mesh; put them there from the start, or its second call
    # sees other input shardings and compiles the step again (4-5 s each).
    tau, opt_state, bad = jax.device_put((tau, self._init(tau), bad),
                                         _replicated(self.params))
    hp = {f: jnp.asarray([getattr(s, f) for s in settings], jnp.float32)
          for f in ("k_coef", "lr", "temperature")}
    # Each setting draws its own batches from its seed, so a setting trains
    # the same alone as in a stack.
    rngs = [np.random.default_rng([s.seed, pc.seed]) for s in settings]
    tokens = jnp.asarray(data.tokens)
    last = read_positions(data)
    m = None
    for step in tqdm(range(pc.steps), desc=f"masks x{len(settings)}",
                     disable=not progress, leave=False):
      pairs = np.stack([r.choice(n_pairs, bs, replace=False) for r in rngs])
      idx = np.stack([2 * pairs, 2 * pairs + 1], -1).reshape(len(rngs), -1)
      tau, opt_state, bad, m = self._step(
          tau, opt_state, bad, jnp.float32(step / pc.steps), jnp.asarray(idx),
          hp, tokens, last, target, alt, self.params, self.means)
    flat = np.concatenate([np.asarray(tau[s.name]) for s in sites], 1)
    return flat, jax.device_get(m), np.asarray(bad)

  def _labels(self, data, n, labels):
    if labels is None:
      labels = [(data.target, data.alternative)] * n
    return (np.stack([t for t, _ in labels]).astype(np.int32),
            np.stack([a for _, a in labels]).astype(np.int32))

  def diffs(self, keep_MxN, data, labels=None):
    """Logit differences [M, rows] with everything outside each node set
    mean-ablated; a few node sets per call (`call_rows`)."""
    keep = np.asarray(keep_MxN, np.float32).reshape(-1, self.n_nodes)
    target, alt = self._labels(data, len(keep), labels)
    tokens, out = jnp.asarray(data.tokens), []
    last = read_positions(data)
    i = 0
    while i < len(keep):
      sl = slice(i, i + call_rows(len(keep) - i, tokens.size))
      out.append(np.asarray(self._diffs(
          jnp.asarray(keep[sl]), tokens, last, jnp.asarray(target[sl]),
          jnp.asarray(alt[sl]), self.params, self.means)))
      i = sl.stop
    return np.concatenate(out) if out else np.zeros((0, len(data.target)))

  def scores(self, keep_MxN, train, test=None, labels=None, test_labels=None,
             d_train=None):
    """Losses of node sets [M, n_nodes]: on train (raw and calibrated, the
    calibration fitted there) and, given a test split, on test with that
    calibration. d_train: the train logit differences, if already known."""
    keep = np.asarray(keep_MxN).reshape(-1, self.n_nodes)
    d_tr = self.diffs(keep, train, labels) if d_train is None else d_train
    s_tr = self.signs(train, len(keep), labels)
    ab = (np.asarray(fit_calibration(d_tr, s_tr)) if self.pc.calibrate
          else np.tile([1.0, 0.0], (len(keep), 1)))
    if test is None:
      return Scores(bce(d_tr), bce(d_tr, ab, s_tr), ab)
    d_te = self.diffs(keep, test, test_labels)
    s_te = self.signs(test, len(keep), test_labels)
    return Scores(bce(d_tr), bce(d_tr, ab, s_tr), ab, bce(d_te),
                  bce(d_te, ab, s_te))

  def signs(self, data, n, labels=None):
    t, a = self._labels(data, n, labels)
    return scoring.calibration_sign(t, a)

  def search(self, tau_SxN, train, target_loss, labels=None, progress=False,
             exact=True, exclude=()):
    """The smallest k whose top-k nodes by tau reach the target on these
    train pairs (calibrated, fitted on them), for every setting at once:
    bisection from the trained circuit (tau > 0), each round one batched
    evaluation of every setting's probe.

    exact=False (the sweep, which only needs the smallest circuit) bounds
    the work: a setting that is not the leader probes just below the best
    circuit found so far; failing there, it cannot win and stops ("beaten",
    its k an upper bound). That costs a setting one evaluation instead of a
    dozen. `exclude`: settings that may not lead (failed on test).

    Returns a SearchResult: per setting its node order, k, keep, train
    loss at k, reached, exact, train logit differences and k_trained."""
    S, n = tau_SxN.shape
    tau = np.where(np.isfinite(tau_SxN), tau_SxN, -np.inf)
    order = np.argsort(-tau, axis=1, kind="stable")
    lab = labels or [(train.target, train.alternative)] * S
    full_cache = {}

    def losses(rows, ks):
      if not len(rows):
        return np.zeros(0), np.zeros((0, len(train.target)))
      keep = np.stack([keep_flat(order[r], k, n) for r, k in zip(rows, ks)])
      d = self.diffs(keep, train, [lab[r] for r in rows])
      sc = self.scores(keep, train, None, [lab[r] for r in rows], d_train=d)
      return sc.train, d

    k_pos = np.minimum((tau > 0).sum(1), n)
    lo, hi = np.full(S, -1), np.full(S, n)
    best = np.full(S, np.inf)  # loss at hi, once hi is known to pass
    best_d = np.zeros((S, len(train.target)))
    l, d = losses(np.arange(S), k_pos)
    fallback = [(k_pos[r], l[r], d[r]) for r in range(S)]
    ok = l <= target_loss
    hi[ok], best[ok], best_d[ok] = k_pos[ok], l[ok], d[ok]
    lo[~ok] = k_pos[~ok]
    for r in np.nonzero(~ok)[0]:  # does the whole model reach it?
      key = (id(lab[r][0]), id(lab[r][1]))  # all nodes: one per labelling
      if key not in full_cache:
        full_cache[key] = tuple(x[0] for x in losses([r], [n]))
      lf, df = full_cache[key]
      if lf <= target_loss:
        best[r], best_d[r] = lf, df
      else:
        lo[r] = n  # never reached: nothing to bisect
        if lf < fallback[r][1]:
          fallback[r] = (n, lf, df)
    beaten = np.zeros(S, bool)
    allowed = np.ones(S, bool)
    allowed[list(exclude)] = False
    bar = tqdm(desc=f"k search x{S}", unit="round", disable=not progress,
               leave=False)
    while True:
      open_ = (hi - lo > 1) & ~beaten
      lead = None
      if not exact:
        passing = np.nonzero(np.isfinite(best) & allowed)[0]
        if len(passing):
          lead = passing[np.lexsort((best[passing], hi[passing]))[0]]
          # Below the leader's circuit or out: the others probe there.
          out = open_ & (lo >= hi[lead] - 1) & (np.arange(S) != lead)
          beaten |= out
          open_ &= ~out
      rows = np.nonzero(open_)[0]
      if not len(rows):
        break
      bar.update()
      mid = (lo[rows] + hi[rows]) // 2
      if lead is not None:
        mid = np.where(rows == lead, mid, np.minimum(mid, hi[lead] - 1))
      l, d = losses(rows, mid)
      for i, r in enumerate(rows):
        if l[i] <= target_loss:
          hi[r], best[r], best_d[r] = mid[i], l[i], d[i]
        else:
          lo[r] = mid[i]
    bar.close()
    reached = np.isfinite(best)
    k = np.where(reached, hi, [f[0] for f in fallback]).astype(int)
    loss = np.where(reached, best, [f[1] for f in fallback])
    d_at_k = np.stack([best_d[r] if reached[r] else fallback[r][2]
                       for r in range(S)])
    keep = np.stack([keep_flat(o, kk, n) for o, kk in zip(order, k)])
    return SearchResult(order=order, k=k, keep=keep, train_loss=loss,
                        reached=reached, exact=(hi - lo <= 1) | ~reached,
                        d_train=d_at_k, k_trained=k_pos)


def _replicated(params):
  """A sharding that replicates over the mesh params are laid out on (None
  if they are not on one: device_put then leaves arrays where they are)."""
  sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh,
                                      jax.sharding.PartitionSpec())
  return None


def keep_flat(order, k, n):
  out = np.zeros(n, bool)
  out[order[:int(k)]] = True
  return out

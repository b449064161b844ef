"""`--mode=prune`: learn node masks on a trained model, find the smallest
circuit that keeps the task loss at the target, validate it (paper §2.2, App. A.5).

A program separate from training: it restores parameters only, never builds
the training optimizer, and hands the model a pytree of interventions
(x <- m*x + (1-m)*mean, m = H(tau)) keyed by site name. Several
hyperparameter settings train at once in one jitted program (vmap over the
mask parameters) instead of the authors' hundreds of sequential runs.
"""

import dataclasses
import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from sparse_circuits import circuit as circuit_lib
from sparse_circuits import model as model_lib
from sparse_circuits import reporting

_log = reporting.get(__name__)


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


def last_logits(params, cfg, tokens, masks=None, means=None, last=None):
  """Logits at each row's last prompt position `last` [N] (right-padded task
  prompts, `TaskData.last`); with last=None, at the final column."""
  iv = interventions(masks, means) if masks is not None else None
  logits, _ = model_lib.forward(params, tokens, cfg, interventions=iv,
                                last_only=last is None, read_at=last)
  return logits[:, -1]


def logit_diff(params, cfg, data_tokens, target, alternative, masks=None,
               means=None, last=None):
  """d = logit[target] - logit[alternative] at the last position, [N]."""
  lg = last_logits(params, cfg, data_tokens, masks, means, last)
  return (jnp.take_along_axis(lg, target[:, None], 1)[:, 0] -
          jnp.take_along_axis(lg, alternative[:, None], 1)[:, 0])


def _last(data):
  """The read positions of task data (`TaskData.last`); None for data
  without them, read at the final column."""
  last = getattr(data, "last", None)
  return None if last is None else jnp.asarray(last, jnp.int32)


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


# ---------------------------------------------------------------- training

@dataclasses.dataclass(frozen=True)
class Setting:
  k_coef: float
  lr: float
  temperature: float
  seed: int


def sweep_settings(pc) -> list[Setting]:
  return [Setting(*s) for s in itertools.product(
      pc.sweep_k_coef, pc.sweep_lr, pc.sweep_temperature, pc.sweep_seeds)]


def init_tau(sites, seed, mean=0.1, std=0.01):
  key = jax.random.key(seed)
  keys = jax.random.split(key, len(sites))
  return {s.name: mean + std * jax.random.normal(k, (s.width,))
          for s, k in zip(sites, keys)}


def _mask_tx(pc):
  return optax.chain(optax.clip_by_global_norm(pc.clip),
                     optax.scale_by_adam(b1=0.9, b2=pc.b2))


def make_train_fn(params, cfg, means, pc, data):
  """A jitted step over a stack of settings: (tau, opt, step, idx, hp) -> ...

  The model, means and task arrays are arguments of the jitted program, not
  constants closed over: as constants XLA constant-folds the unmasked part
  of the forward pass at compile time (seconds per compile)."""
  tx = _mask_tx(pc)
  consts = (params, means, jnp.asarray(data.tokens), jnp.asarray(data.target),
            jnp.asarray(data.alternative), _last(data))

  def loss_fn(tau, temperature, k_coef, idx, consts):
    params, means, tokens, target, alt, last = consts
    masks = {s: hard_step(t, temperature) for s, t in tau.items()}
    d = logit_diff(params, cfg, tokens[idx], target[idx], alt[idx], masks,
                   means, None if last is None else last[idx])
    task = jnp.mean(jax.nn.softplus(-d))
    n_on = sum(jnp.sum(m) for m in masks.values())
    return task + k_coef * n_on, (task, n_on)

  def one(tau, opt_state, step, idx, hp, consts):
    (_, (task, n_on)), g = jax.value_and_grad(loss_fn, has_aux=True)(
        tau, hp["temperature"], hp["k_coef"], idx, consts)
    u, opt_state = tx.update(g, opt_state)
    lr = hp["lr"] * (1.0 - step / pc.steps)
    tau = jax.tree.map(
        lambda t, u: jnp.clip(t - lr * (u + pc.weight_decay * t), -1, 1),
        tau, u)
    return tau, opt_state, {"task_loss": task, "nodes": n_on}

  step_fn = jax.jit(jax.vmap(one, in_axes=(0, 0, None, None, 0, None)))
  return (lambda tau, opt_state, step, idx, hp:
          step_fn(tau, opt_state, step, idx, hp, consts)), jax.vmap(tx.init)


def train_masks(params, cfg, means, pc, data, settings, sites, progress=True):
  """Trains one tau pytree per setting, all at once; returns stacked taus."""
  step_fn, init_fn = make_train_fn(params, cfg, means, pc, data)
  tau = jax.tree.map(lambda *x: jnp.stack(x), *[
      init_tau(sites, s.seed, pc.init_mean, pc.init_std) for s in settings])
  opt_state = init_fn(tau)
  hp = {f: jnp.asarray([getattr(s, f) for s in settings], jnp.float32)
        for f in ("k_coef", "lr", "temperature")}
  n_pairs = len(data.target) // 2
  rng = np.random.default_rng(pc.get("seed", 0))
  bs = min(pc.batch_size, n_pairs)
  for step in tqdm(range(pc.steps), desc="masks", disable=not progress,
                   leave=False):
    pairs = rng.choice(n_pairs, bs, replace=False)
    idx = jnp.asarray(np.stack([2 * pairs, 2 * pairs + 1], 1).reshape(-1))
    tau, opt_state, m = step_fn(tau, opt_state, jnp.float32(step), idx, hp)
  return tau, jax.device_get(m)


# ---------------------------------------------------------------- discretise

def _calibrated_loss(d, sign, steps=16):
  """min over (a, b) of mean softplus(-(a*d + b*sign)), by LBFGS."""
  def f(ab):
    return jnp.mean(jax.nn.softplus(-(ab[0] * d + ab[1] * sign)))
  opt = optax.lbfgs()
  ab = jnp.array([1.0, 0.0])
  state = opt.init(ab)
  vg = optax.value_and_grad_from_state(f)
  for _ in range(steps):
    v, g = vg(ab, state=state)
    u, state = opt.update(g, state, ab, value=v, grad=g, value_fn=f)
    ab = optax.apply_updates(ab, u)
  return jnp.minimum(f(ab), f(jnp.array([1.0, 0.0])))


class Evaluator:
  """Task loss of the model with a given set of nodes kept (rest ablated)."""

  def __init__(self, params, cfg, means, data, sites, calibrate):
    self.sites, self.calibrate = sites, calibrate
    consts = (params, means, jnp.asarray(data.tokens),
              jnp.asarray(data.target), jnp.asarray(data.alternative),
              _last(data))

    @jax.jit
    def losses(masks, consts):  # arguments, not constants: see make_train_fn
      params, means, tokens, target, alt, last = consts
      d = logit_diff(params, cfg, tokens, target, alt, masks, means, last)
      raw = jnp.mean(jax.nn.softplus(-d))
      sign = jnp.where(target < alt, 1.0, -1.0)
      return raw, (_calibrated_loss(d, sign) if calibrate else raw)

    self._losses = lambda masks: losses(masks, consts)

  def masks_from_keep(self, keep):
    return {s.name: jnp.asarray(keep[s.name], jnp.float32) for s in self.sites}

  def loss(self, keep, calibrated=True):
    raw, cal = self._losses(self.masks_from_keep(keep))
    return float(cal if calibrated else raw)


def ranking(tau, sites):
  """Flat node order by tau, descending (ties to forward order)."""
  flat = np.concatenate([np.asarray(tau[s.name]) for s in sites])
  return np.argsort(-flat, kind="stable")


def keep_top(order, k, sites):
  flat = np.zeros(sum(s.width for s in sites), bool)
  flat[order[:k]] = True
  out, start = {}, 0
  for s in sites:
    out[s.name] = flat[start:start + s.width]
    start += s.width
  return out


def smallest_k(evaluator, order, sites, target):
  """Bisection for the smallest k whose (calibrated) loss <= target.
  Returns (k, loss, reached)."""
  n = len(order)
  full = evaluator.loss(keep_top(order, n, sites))
  if full > target:
    return n, full, False
  lo, hi, hi_loss = 0, n, full
  while hi - lo > 1:
    mid = (lo + hi) // 2
    l = evaluator.loss(keep_top(order, mid, sites))
    if l <= target:
      hi, hi_loss = mid, l
    else:
      lo = mid
  return hi, hi_loss, True


# ---------------------------------------------------------------- one task

def prune_task(params, cfg, means, task, pc, sites, progress=True,
               settings=None):
  """Sweep, discretise and validate one task. Returns a result dict with the
  kept nodes (site -> bool), tau, and every loss of the circuit.json schema."""
  settings = settings or sweep_settings(pc)
  t0 = time.perf_counter()
  tau, last = train_masks(params, cfg, means, pc, task.train, settings, sites,
                          progress)
  train_eval = Evaluator(params, cfg, means, task.train, sites, pc.calibrate)
  best = None
  for i, s in enumerate(settings):
    tau_i = {k: np.asarray(v[i]) for k, v in tau.items()}
    order = ranking(tau_i, sites)
    k, loss, ok = smallest_k(train_eval, order, sites, pc.target_loss)
    cand = dict(setting=dataclasses.asdict(s), k=k, train_loss=loss,
                reached=ok, tau=tau_i, order=order)
    if best is None or (ok, -k, -loss) > (best["reached"], -best["k"],
                                          -best["train_loss"]):
      best = cand
  search_s = time.perf_counter() - t0
  test_eval = Evaluator(params, cfg, means, task.test, sites, pc.calibrate)
  n = len(best["order"])
  keep = keep_top(best["order"], best["k"], sites)
  ablated = {k: ~v for k, v in keep.items()}
  all_on = keep_top(best["order"], n, sites)
  ks = sorted(set(np.unique(np.round(np.geomspace(1, n, 14))).astype(int)) |
              {best["k"]})
  curve = [{"k": int(k), "loss": test_eval.loss(keep_top(best["order"], k,
                                                          sites))} for k in ks]
  return dict(
      keep=keep, tau=best["tau"], setting=best["setting"], k=best["k"],
      reached=best["reached"], search_seconds=search_s,
      sweep=[{"setting": dataclasses.asdict(s),
              "final_task_loss": float(last["task_loss"][i]),
              "final_nodes": float(last["nodes"][i])}
             for i, s in enumerate(settings)],
      losses={"full_model": test_eval.loss(all_on, calibrated=False),
              "circuit": test_eval.loss(keep),
              "circuit_uncalibrated": test_eval.loss(keep, calibrated=False),
              "circuit_train": best["train_loss"],
              "circuit_ablated": test_eval.loss(ablated, calibrated=False),
              "target": pc.target_loss},
      loss_vs_k=curve, evaluator=test_eval)


def random_control(ctx, seed, batches, task, pc, sites, setting):
  """The same pruning (the setting that won on the trained model) on a
  randomly initialised model of the same shape (sparsified to the run's
  final k when the run is sparse)."""
  from sparse_circuits import sparsity  # pylint: disable=g-import-not-at-top
  cfg = ctx.cfg
  rand = model_lib.init_params(cfg, seed + 1)
  if ctx.plan is not None:
    rand = sparsity.project(rand, ctx.plan,
                            jnp.int32(ctx.plan.schedule.num_steps))
  means = compute_means(rand, cfg, batches, sites)
  res = prune_task(rand, cfg, means, task, pc, sites, progress=False,
                   settings=[Setting(**setting)])
  return {"loss": res["losses"]["circuit"], "k": res["k"],
          "reached": res["reached"],
          "full_model": res["losses"]["full_model"]}


# ---------------------------------------------------------------- the mode


def run(config, workdir: str):
  """`--mode=prune`: one circuit.json per task in config.prune.tasks."""
  from sparse_circuits import data  # pylint: disable=g-import-not-at-top
  from sparse_circuits import runs  # pylint: disable=g-import-not-at-top
  from sparse_circuits import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  r = runs.load(workdir, overlay=config)
  config, cfg, params, step, tok = r.config, r.cfg, r.params, r.step, r.tokenizer
  pc = config.prune
  info = data.prepare(config, workdir, reuse=True)
  sites = circuit_lib.node_sites(cfg)
  batches = data.eval_batches(config, info, pc.mean_batches)
  means_path = os.path.join(workdir, "prune", f"means_{step}.npz")
  if os.path.exists(means_path):
    means = dict(np.load(means_path))
  else:
    means = compute_means(params, cfg, batches, sites)
    os.makedirs(os.path.dirname(means_path), exist_ok=True)
    np.savez(means_path, **means)
  means_j = {k: jnp.asarray(v) for k, v in means.items()}
  all_tasks = tasks_lib.build_all(config, tok, names=list(pc.tasks))
  paths = []
  for name in pc.tasks:
    task = all_tasks[name]
    res = prune_task(params, cfg, means_j, task, pc, sites)
    control = (random_control(r.ctx, config.seed, batches, task, pc, sites,
                              res["setting"]) if pc.random_control else None)
    doc = circuit_lib.document(
        params, cfg, task, res, means, control, tok,
        heldout=data.eval_batches(config, info, 1)[0],
        model_info={"workdir": os.path.abspath(workdir), "step": int(step),
                    "config": config.model.to_dict()},
        prune_config=pc.to_dict())
    doc["tasks_config"] = config.tasks.to_dict()  # to rebuild the same pairs
    out_dir = os.path.join(workdir, "circuits", name)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "circuit.json")
    with open(path, "w") as f:
      json.dump(doc, f, indent=1, default=_json_default)
    paths.append(path)
    L = doc["losses"]
    _log.info(f"{name}: {doc['counts']['nodes']} nodes, {doc['counts']['edges']} "
          f"edges (of {doc['counts']['total_nodes']}); loss full "
          f"{L['full_model']:.3f}, circuit {L['circuit']:.3f} "
          f"(target {pc.target_loss}{'' if res['reached'] else ', NOT reached'}"
          f"), circuit ablated {L['circuit_ablated']:.3f}, random-init "
          f"control {_fmt(L['random_init_control'])}; "
          f"{res['search_seconds']:.0f}s -> {path}")
  return paths


def _fmt(x):
  return "n/a" if x is None else f"{x:.3f}"


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(type(o))

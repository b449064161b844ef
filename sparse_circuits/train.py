"""Training: one pure jitted step, the loop, metrics and resumable checkpoints.

Resume order: this workdir's newest checkpoint that restores completely
(`checkpoints.restore_latest` walks back past damaged ones), then
`train.init_from` (parameters only), then scratch. Metrics are pulled to the
host one step late so the device never waits for the logger; a non-finite
loss stops the run before anything is saved, leaving the last good
checkpoint intact.
"""

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from sparse_circuits import checkpoints
from sparse_circuits import data
from sparse_circuits import distributed
from sparse_circuits import layout
from sparse_circuits import lock
from sparse_circuits import model as model_lib
from sparse_circuits import optim
from sparse_circuits import preemption
from sparse_circuits import reporting
from sparse_circuits import runs
from sparse_circuits import sharding
from sparse_circuits import sparsity
from sparse_circuits import viz

_log = reporting.get(__name__)


@dataclasses.dataclass(frozen=True)
class Objective:
  """What `run` trains when it is more than the model on its LM loss (the
  default, `None`); `experiments/bridge.py` trains bridges with one.

  The train state is then {"model": params, **extras}. The model's params
  stay the checkpoint's `params` item (eval, prune and report read the run
  unchanged); each extra is a checkpoint item of its own
  (`checkpoints.EXTRA_ITEMS`). `loss(state, frozen, batch, step)` returns
  (loss, {name: scalar}) for the metrics; `frozen` (e.g. a frozen model's
  parameters) enters the jitted step as an argument placed with
  `frozen_shardings`, not as a constant compiled into it.
  """
  abstract_extras: Any                 # {name: ShapeDtypeStruct tree}
  init_extras: Callable[[int], dict]   # seed -> {name: tree}
  loss: Callable
  frozen: Any = None
  frozen_shardings: Any = None


@dataclasses.dataclass
class Setup:
  """The run context (`runs.Context`) plus the optimizer and its state's
  shapes and shardings. With an `objective`, the context's abstract params
  and plan are those of the whole train state."""
  ctx: runs.Context
  tx: optax.GradientTransformation
  lr_fn: Callable
  abstract_opt_state: Any  # ShapeDtypeStructs carrying their shardings
  opt_shardings: Any
  objective: Objective | None = None

  config = property(lambda self: self.ctx.config)
  cfg = property(lambda self: self.ctx.cfg)
  plan = property(lambda self: self.ctx.plan)
  mesh = property(lambda self: self.ctx.mesh)
  abstract_params = property(lambda self: self.ctx.abstract_params)
  param_shardings = property(lambda self: self.ctx.param_shardings)


def _with_extras(ctx: runs.Context, objective: Objective) -> runs.Context:
  """The context of the train state {"model": params, **extras}."""
  plain = lambda t: jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), t)
  abstract = {"model": plain(ctx.abstract_params),
              **plain(dict(objective.abstract_extras))}
  shardings = sharding.tree_shardings(
      abstract, ctx.mesh, [tuple(r) for r in ctx.config.mesh.rules])
  return dataclasses.replace(
      ctx, plan=runs.sparsity_plan(ctx.config, abstract),
      abstract_params=runs.with_shardings(abstract, shardings),
      param_shardings=shardings)


def make_setup(config, devices=None, objective: Objective | None = None
               ) -> Setup:
  ctx = runs.context(config, devices)
  if objective is not None:
    ctx = _with_extras(ctx, objective)
  n_batch = math.prod(ctx.mesh.shape[a] for a in sharding.BATCH_AXES)
  if config.train.batch_size % n_batch:
    raise ValueError(f"config.train.batch_size={config.train.batch_size} is "
                     f"not divisible by the mesh's batch axes ({n_batch})")
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          ctx.abstract_params)
  tx, lr_fn = optim.make_optimizer(config, abstract, ctx.plan)
  abstract_opt = jax.eval_shape(tx.init, abstract)
  o_sh = sharding.tree_shardings(abstract_opt, ctx.mesh,
                                 [tuple(r) for r in config.mesh.rules])
  return Setup(ctx, tx, lr_fn, runs.with_shardings(abstract_opt, o_sh), o_sh,
               objective)


def init_state(setup: Setup, seed: int):
  """Fresh (params, opt_state), created directly with their shardings."""
  def init():
    params = model_lib.init_params(setup.cfg, seed)
    if setup.objective is not None:
      params = {"model": params, **setup.objective.init_extras(seed)}
    if setup.plan is not None:  # start exactly at the step-0 k (dense)
      params = sparsity.project(params, setup.plan, jnp.int32(0))
    return params, setup.tx.init(params)
  return jax.jit(init, out_shardings=(setup.param_shardings,
                                      setup.opt_shardings))()


def _post_act_sites(cfg):
  return tuple(f"{i}.mlp.post_act" for i in range(cfg.n_layer))


def make_train_step(setup: Setup):
  """(params, opt_state, step, batch[, frozen]) -> (params, opt_state,
  metrics); `frozen` with an objective.

  With `train.microbatches = M` > 1 the global batch is split into M
  microbatches whose gradients a `lax.scan` sums inside the step, so only
  one microbatch's activations are live at a time; the update equals the
  one-batch update up to float rounding. Microbatch i takes rows i, M + i,
  2M + i, ...: each device's contiguous block of rows holds an equal share
  of every microbatch, so the split moves no data between devices. Why a
  scan: compiled for the small config (bf16, one CPU device) the step's
  temporaries were 5.66 GB at M = 1, 1.50 GB with the scan at M = 4 and
  5.71 GB with an unrolled Python loop at M = 4 (XLA overlaps the copies);
  optax.MultiSteps would make each microbatch a call of the step and so
  change the data position and the checkpoints.
  """
  cfg, plan, tx, objective = setup.cfg, setup.plan, setup.tx, setup.objective
  micro = int(setup.config.train.microbatches)
  batch_size = setup.config.train.batch_size
  n_batch = math.prod(setup.mesh.shape[a] for a in sharding.BATCH_AXES)
  if micro < 1 or batch_size % (micro * n_batch):
    raise ValueError(
        f"config.train.batch_size={batch_size} does not split into "
        f"train.microbatches={micro} microbatches of a multiple of the "
        f"mesh's batch axes ({n_batch} devices)")

  def loss_fn(params, batch, frozen, step):
    if objective is not None:  # (loss, {name: scalar})
      return objective.loss(params, frozen, batch, step)
    logits, acts = model_lib.forward(params, batch[:, :-1], cfg,
                                     capture=_post_act_sites(cfg))
    loss = jnp.mean(model_lib.token_nll(logits, batch[:, 1:]))
    alive = {k: jnp.any(a != 0, axis=(0, 1)) for k, a in acts.items()}
    return loss, alive

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulate(params, batch, frozen, step):
    """(mean loss, aux, mean grads) over microbatches: a boolean aux (the
    default's per-neuron alive) is alive anywhere, a number the mean."""
    rows = batch.reshape(batch_size // micro, micro, batch.shape[1])
    micro_batches = jax.lax.with_sharding_constraint(
        rows.swapaxes(0, 1), NamedSharding(setup.mesh,
                                           P(None, sharding.BATCH_AXES)))

    def body(carry, mb):
      loss_sum, aux_sum, grad_sum = carry
      (loss, aux), grads = grad_fn(params, mb, frozen, step)
      return (loss_sum + loss, jax.tree.map(_merge, aux_sum, aux),
              jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(
        lambda p, sh: jax.lax.with_sharding_constraint(jnp.zeros_like(p), sh),
        params, setup.param_shardings)
    aux0 = jax.tree.map(
        lambda a: jnp.zeros(a.shape, a.dtype),
        jax.eval_shape(lambda mb: grad_fn(params, mb, frozen, step)[0][1],
                       micro_batches[0]))
    (loss_sum, aux, grad_sum), _ = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), aux0, zeros), micro_batches)
    aux = jax.tree.map(lambda a: a if a.dtype == jnp.bool_ else a / micro, aux)
    return loss_sum / micro, aux, jax.tree.map(lambda g: g / micro, grad_sum)

  def step_fn(params, opt_state, step, batch, frozen=None):
    if micro == 1:
      (loss, aux), grads = grad_fn(params, batch, frozen, step)
    else:
      loss, aux, grads = accumulate(params, batch, frozen, step)
    with jax.named_scope("optimizer"):  # a profile's label
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g))
                             for g in jax.tree.leaves(grads)))
    metrics = dict(loss=loss, grad_norm=grad_norm, lr=setup.lr_fn(step))
    if objective is None:  # aux: each MLP neuron alive anywhere in the batch
      metrics["dead_neurons"] = sum(jnp.sum(~a) for a in aux.values())
    else:
      metrics.update(aux)
    if plan is not None:
      metrics["pfrac"] = plan.schedule.pfrac_at(step)
      metrics["l0"] = sparsity.l0(params, plan)
    return params, opt_state, metrics

  rep = sharding.replicated(setup.mesh)
  in_shardings = (setup.param_shardings, setup.opt_shardings, rep,
                  sharding.batch_sharding(setup.mesh))
  if objective is not None:
    in_shardings += (objective.frozen_shardings,)
  return jax.jit(
      step_fn, in_shardings=in_shardings,
      out_shardings=(setup.param_shardings, setup.opt_shardings, rep),
      donate_argnums=(0, 1))


def _merge(total, x):
  return jnp.logical_or(total, x) if x.dtype == jnp.bool_ else total + x


def make_eval_step(setup: Setup):
  """Jitted (state, global batch) -> the model's held-out LM loss."""
  if setup.objective is None:
    return runs.lm_eval_step(setup.ctx)
  return jax.jit(
      lambda state, batch: model_lib.lm_loss(state["model"], batch,
                                             setup.cfg),
      in_shardings=(setup.param_shardings,
                    sharding.batch_sharding(setup.mesh)),
      out_shardings=sharding.replicated(setup.mesh))


class MetricsLog:
  """DIR/metrics.jsonl, one JSON row per logged step, written by process 0."""

  def __init__(self, workdir, resume_step):
    self.path = layout.Layout(workdir).metrics
    self.enabled = jax.process_index() == 0
    if self.enabled and os.path.exists(self.path):  # drop rows after resume
      # A run killed mid-write leaves a partial last line: skipped, not fatal.
      rows = [r for r in viz.read_metrics(self.path)
              if r.get("step", resume_step + 1) <= resume_step]
      reporting.write_text(self.path,  # whole: a crash here loses nothing
                           "".join(json.dumps(r) + "\n" for r in rows))

  def write(self, row):
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _host_metrics(step, m):
  m = jax.device_get(m)
  row = {"step": int(step)}
  for k, v in m.items():
    if k == "l0":
      row["l0"] = {p: int(c) for p, c in v.items()}
      row["l0_total"] = int(sum(row["l0"].values()))
    else:
      row[k] = float(v)
  return row


def _split(setup, state):
  """(the checkpoint's params item, its extra items) of a train state."""
  if setup.objective is None:
    return state, None
  return state["model"], {k: v for k, v in state.items() if k != "model"}


def _restore_or_init(setup, config, mngr, it):
  """(params, opt_state, start_step): latest here, else init_from, else new."""
  abstract, abstract_extras = _split(setup, setup.abstract_params)
  restored, _ = checkpoints.restore_latest(
      mngr, abstract, setup.abstract_opt_state, it,
      abstract_extras=abstract_extras)
  if restored is not None:
    params, opt_state, meta = restored
    if abstract_extras:
      params = {"model": params, **meta["extras"]}
    return params, opt_state, int(meta["step"])
  if not config.train.init_from:
    return (*init_state(setup, config.seed), 0)
  params, _ = checkpoints.restore_params(config.train.init_from, abstract)
  if setup.objective is not None:  # the model from init_from, extras fresh
    fresh, _ = init_state(setup, config.seed)
    params = {**fresh, "model": params}
  opt_state = jax.jit(setup.tx.init, out_shardings=setup.opt_shardings)(params)
  return params, opt_state, 0


def run(config, workdir: str, objective: Objective | None = None):
  """`--mode=train`: train (or resume) and checkpoint into workdir; with an
  `objective`, what it says (e.g. `--mode=bridge`).

  Holds WORKDIR/LOCK throughout (one training process per workdir). On
  SIGTERM/SIGINT it finishes the step in flight, saves it and raises
  `preemption.Preempted`.
  """
  os.makedirs(workdir, exist_ok=True)
  with lock.workdir_lock(workdir):
    return _run(config, workdir, objective)


def _run(config, workdir, objective=None):
  setup = make_setup(config, objective=objective)
  info = distributed.primary_first(data.prepare, config, workdir)
  it = data.train_iterator(config, info)
  eval_batches = [distributed.global_from_full(b, setup.mesh) for b in
                  data.eval_batches(config, info, config.train.eval_batches)]
  t = config.train
  mngr = checkpoints.manager(workdir, t.keep_checkpoints)
  try:
    with preemption.StopRequest() as stop:
      params, stopped = _loop(config, workdir, setup, it, eval_batches, mngr,
                              stop)
  finally:
    mngr.close()  # waits for the last save; no Orbax threads left behind
  if stopped is not None:
    where = f"{checkpoints.ckpt_dir(workdir)}/{stopped[1]}"
    raise preemption.Preempted(
        f"stopped by {stopped[0]} after step {stopped[1]}: saved {where}; "
        "run the same command to resume from there", stopped[1])
  return params


def _loop(config, workdir, setup, it, eval_batches, mngr, stop):
  """The training steps; (params, None) or (params, (signal, step saved))."""
  t = config.train
  params, opt_state, start = _restore_or_init(setup, config, mngr, it)
  log = MetricsLog(workdir, start)
  train_step, eval_step = make_train_step(setup), make_eval_step(setup)
  frozen = () if setup.objective is None else (setup.objective.frozen,)
  tokens_per_step = t.batch_size * config.model.block_size
  pending, last_good, row = None, start, {}
  bar = tqdm(total=t.num_steps, initial=start, desc="train", unit="step",
             disable=jax.process_index() != 0, dynamic_ncols=True)
  tick = time.perf_counter()

  def flush():
    nonlocal pending, tick, row
    if pending is None:
      return
    step, m, ev = pending
    pending = None
    row = _host_metrics(step, m)
    if ev is not None:
      row["eval_loss"] = float(np.mean(jax.device_get(ev)))
    if not (math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])):
      mngr.wait_until_finished()
      raise FloatingPointError(
          f"loss became non-finite ({row['loss']}) at step {step}; nothing "
          f"after step {last_good} was saved: the last good checkpoint is "
          f"{checkpoints.ckpt_dir(workdir)}/{last_good}")
    now = time.perf_counter()
    row["tokens_per_s"] = tokens_per_step / max(now - tick, 1e-9)
    tick = now
    if step % t.log_every == 0 or ev is not None:
      log.write(row)
    bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)

  stopped = None
  for step in range(start, t.num_steps):
    batch = sharding.global_batch(next(it), setup.mesh)
    params, opt_state, metrics = train_step(params, opt_state,
                                            jnp.int32(step), batch, *frozen)
    done = step + 1
    ev = None
    if done % t.eval_every == 0 or done == t.num_steps:
      ev = [eval_step(params, b) for b in eval_batches]  # async
    flush()  # the previous step's metrics, while this step runs
    pending = (done, metrics, ev)
    bar.update(1)
    stop_now = stop.requested(mngr, done) and done < t.num_steps
    if done % t.checkpoint_every == 0 or done == t.num_steps or stop_now:
      flush()
      model, extras = _split(setup, params)
      checkpoints.save(mngr, done, model, opt_state, config, it, extras)
      last_good = done
    if stop_now:
      stopped = (stop.signal_name, done)
      break
  flush()
  mngr.wait_until_finished()
  bar.close()
  if jax.process_index() == 0 and row and stopped is None:
    _log.info(f"trained to step {t.num_steps}: loss {row['loss']:.4f}"
          + (f", eval loss {row['eval_loss']:.4f}" if "eval_loss" in row
             else ""))
  return params, stopped

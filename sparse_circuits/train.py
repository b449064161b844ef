"""Training: one pure jitted step, the loop, metrics and resumable checkpoints.

Resume order: this workdir's latest checkpoint, then `train.init_from`
(parameters only), then scratch. Metrics are pulled to the host one step late
so the device never waits for the logger; a non-finite loss stops the run
before anything is saved, leaving the last good checkpoint intact.
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
from tqdm import tqdm

from sparse_circuits import checkpoints
from sparse_circuits import distributed
from sparse_circuits import model as model_lib
from sparse_circuits import optim
from sparse_circuits import sharding
from sparse_circuits import sparsity


@dataclasses.dataclass
class Setup:
  """Everything static about a run: shapes, plan, optimizer, mesh, shardings."""
  config: Any
  cfg: model_lib.ModelConfig
  plan: sparsity.Plan | None
  tx: optax.GradientTransformation
  lr_fn: Callable
  mesh: Any
  abstract_params: Any     # ShapeDtypeStructs carrying their shardings
  abstract_opt_state: Any  # the same for the optimizer state
  param_shardings: Any
  opt_shardings: Any


def model_config(config) -> model_lib.ModelConfig:
  return model_lib.ModelConfig.from_config(config.model)


def make_setup(config, devices=None) -> Setup:
  cfg = model_config(config)
  abstract = model_lib.abstract_params(cfg)
  s = config.sparsity
  plan = None
  if s.enabled:
    plan = sparsity.make_plan(
        abstract, sparsity.Schedule(config.train.num_steps, s.pfrac,
                                    s.expansion_factor, s.anneal_start,
                                    s.anneal_end), s.min_per_neuron)
  tx, lr_fn = optim.make_optimizer(config, abstract, plan)
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = [tuple(r) for r in config.mesh.rules]
  abstract_opt = jax.eval_shape(tx.init, abstract)
  p_sh = sharding.tree_shardings(abstract, mesh, rules)
  o_sh = sharding.tree_shardings(abstract_opt, mesh, rules)
  n_batch = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
  if config.train.batch_size % n_batch:
    raise ValueError(f"config.train.batch_size={config.train.batch_size} is "
                     f"not divisible by the mesh's batch axes ({n_batch})")
  return Setup(config, cfg, plan, tx, lr_fn, mesh,
               _with_shardings(abstract, p_sh),
               _with_shardings(abstract_opt, o_sh), p_sh, o_sh)


def _with_shardings(tree, shardings):
  return jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
      tree, shardings)


def init_state(setup: Setup, seed: int):
  """Fresh (params, opt_state), created directly with their shardings."""
  def init():
    params = model_lib.init_params(setup.cfg, seed)
    if setup.plan is not None:  # start exactly at the step-0 k (dense)
      params = sparsity.project(params, setup.plan, jnp.int32(0))
    return params, setup.tx.init(params)
  return jax.jit(init, out_shardings=(setup.param_shardings,
                                      setup.opt_shardings))()


def _post_act_sites(cfg):
  return tuple(f"{i}.mlp.post_act" for i in range(cfg.n_layer))


def make_train_step(setup: Setup):
  """(params, opt_state, step, batch) -> (params, opt_state, metrics)."""
  cfg, plan, tx = setup.cfg, setup.plan, setup.tx

  def loss_fn(params, batch):
    logits, acts = model_lib.forward(params, batch[:, :-1], cfg,
                                     capture=_post_act_sites(cfg))
    loss = jnp.mean(model_lib.token_nll(logits, batch[:, 1:]))
    dead = sum(jnp.sum(jnp.all(a == 0, axis=(0, 1))) for a in acts.values())
    return loss, dead

  def step_fn(params, opt_state, step, batch):
    (loss, dead), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g))
                             for g in jax.tree.leaves(grads)))
    metrics = dict(loss=loss, grad_norm=grad_norm,
                   lr=setup.lr_fn(step), dead_neurons=dead)
    if plan is not None:
      metrics["pfrac"] = plan.schedule.pfrac_at(step)
      metrics["l0"] = sparsity.l0(params, plan)
    return params, opt_state, metrics

  rep = sharding.replicated(setup.mesh)
  return jax.jit(
      step_fn,
      in_shardings=(setup.param_shardings, setup.opt_shardings, rep,
                    sharding.batch_sharding(setup.mesh)),
      out_shardings=(setup.param_shardings, setup.opt_shardings, rep),
      donate_argnums=(0, 1))


def make_eval_step(setup: Setup):
  return jax.jit(
      lambda params, batch: model_lib.lm_loss(params, batch, setup.cfg),
      in_shardings=(setup.param_shardings,
                    sharding.batch_sharding(setup.mesh)),
      out_shardings=sharding.replicated(setup.mesh))


def evaluate(eval_step, params, global_batches) -> list:
  """Held-out losses, dispatched asynchronously (device arrays)."""
  return [eval_step(params, b) for b in global_batches]


class MetricsLog:
  """DIR/metrics.jsonl, one JSON row per logged step, written by process 0."""

  def __init__(self, workdir, resume_step):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = jax.process_index() == 0
    if self.enabled and os.path.exists(self.path):  # drop rows after resume
      with open(self.path) as f:
        rows = [json.loads(l) for l in f if l.strip()]
      with open(self.path, "w") as f:
        for r in rows:
          if r["step"] <= resume_step:
            f.write(json.dumps(r) + "\n")

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


def _restore_or_init(setup, config, mngr, it):
  """(params, opt_state, start_step): latest here, else init_from, else new."""
  step = mngr.latest_step()
  if step is not None:
    params, opt_state, meta = checkpoints.restore(
        mngr, step, setup.abstract_params, setup.abstract_opt_state, it)
    return params, opt_state, int(meta["step"])
  if not config.train.init_from:
    return (*init_state(setup, config.seed), 0)
  params, _ = checkpoints.restore_params(config.train.init_from,
                                         setup.abstract_params)
  opt_state = jax.jit(setup.tx.init, out_shardings=setup.opt_shardings)(params)
  return params, opt_state, 0


def run(config, workdir: str):
  """`--mode=train`: train (or resume) and checkpoint into workdir."""
  from sparse_circuits import data  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  setup = make_setup(config)
  info = distributed.primary_first(data.prepare, config, workdir)
  it = data.train_iterator(config, info)
  eval_batches = [distributed.global_from_full(b, setup.mesh) for b in
                  data.eval_batches(config, info, config.train.eval_batches)]
  t = config.train
  mngr = checkpoints.manager(workdir, t.keep_checkpoints)
  params, opt_state, start = _restore_or_init(setup, config, mngr, it)
  log = MetricsLog(workdir, start)
  train_step, eval_step = make_train_step(setup), make_eval_step(setup)
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

  kill_at = int(os.environ.get("SPARSE_CIRCUITS_KILL_AT_STEP", "-1"))
  for step in range(start, t.num_steps):
    if step == kill_at:  # tests: a hard crash once the last save is durable
      mngr.wait_until_finished()
      os.kill(os.getpid(), 9)
    batch = sharding.global_batch(next(it), setup.mesh)
    params, opt_state, metrics = train_step(params, opt_state,
                                            jnp.int32(step), batch)
    done = step + 1
    ev = None
    if done % t.eval_every == 0 or done == t.num_steps:
      ev = evaluate(eval_step, params, eval_batches)
    flush()  # the previous step's metrics, while this step runs
    pending = (done, metrics, ev)
    bar.update(1)
    if done % t.checkpoint_every == 0 or done == t.num_steps:
      flush()
      checkpoints.save(mngr, done, params, opt_state, config, it)
      last_good = done
  flush()
  mngr.wait_until_finished()
  mngr.close()
  bar.close()
  if jax.process_index() == 0 and row:
    print(f"trained to step {t.num_steps}: loss {row['loss']:.4f}"
          + (f", eval loss {row['eval_loss']:.4f}" if "eval_loss" in row
             else ""))
  return params

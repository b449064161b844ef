"""The authors' optimizer recipe (method.md §2) as one optax chain.

grad / (RMS(grad) + 1e-5)  ->  Adam(b1, b2, eps=0.1)  ->  -lr_t  ->  top-k
projection (sparsity.sparsify)  ->  decoupled weight decay p -= wd * lr_t * p
on matrices except the bigram table. lr_t = lr * warmup/linear-decay *
sqrt(pfrac_final / pfrac_t): it rises while sparsity anneals (the "sharkfin").
"""

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sparse_circuits import sparsity


def lr_schedule(opt_cfg, schedule: sparsity.Schedule):
  """step -> learning rate, traceable."""
  total = schedule.num_steps
  warm = max(1, int(opt_cfg.warmup_frac * total))

  def fn(step):
    step = jnp.asarray(step, jnp.float32)
    ramp = jnp.minimum((step + 1) / warm, (total - step) / max(1, total - warm))
    shark = jnp.sqrt(schedule.pfrac / schedule.pfrac_at(step))
    return opt_cfg.lr * jnp.clip(ramp, 0.0, 1.0) * shark

  return fn


def normalize_by_rms(eps: float = 1e-5) -> optax.GradientTransformation:
  """g / (||g|| / sqrt(N) + eps), over all parameters together."""

  def update_fn(updates, state, params=None):
    del params
    leaves = jax.tree.leaves(updates)
    n = sum(x.size for x in leaves)
    sq = sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)
    scale = 1.0 / (jnp.sqrt(sq / n) + eps)
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda p: optax.EmptyState(), update_fn)


class DecayState(NamedTuple):
  count: Any


def decoupled_decay(rate_fn, mask) -> optax.GradientTransformation:
  """After the previous links: p_new <- p_new * (1 - rate_fn(step)) where mask."""

  def init_fn(params):
    del params
    return DecayState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    rate = rate_fn(state.count)
    def one(u, p, m):
      return u - rate * (p + u) if m else u
    updates = jax.tree.map(one, updates, params, mask)
    return updates, DecayState(count=state.count + 1)

  return optax.GradientTransformation(init_fn, update_fn)


def decay_mask(params):
  """Matrices (ndim >= 2) are decayed; vectors and the bigram table are not."""
  def one(path, p):
    return p.ndim >= 2 and not re.search(r"bigram_table",
                                         sparsity.path_str(path))
  return jax.tree_util.tree_map_with_path(one, params)


def make_optimizer(config, abstract_params, plan: sparsity.Plan | None):
  """The full chain, and the lr schedule (for logging)."""
  schedule = (plan.schedule if plan is not None else sparsity.Schedule(
      config.train.num_steps, 1.0, 1.0))
  lr = lr_schedule(config.opt, schedule)
  links = []
  if config.opt.grad_rms_norm:
    links.append(normalize_by_rms())
  links += [
      optax.scale_by_adam(b1=config.opt.b1, b2=config.opt.b2,
                          eps=config.opt.eps),
      optax.scale_by_schedule(lambda s: -lr(s)),
  ]
  if plan is not None:
    links.append(sparsity.sparsify(plan))
  if config.opt.weight_decay:
    links.append(decoupled_decay(lambda s: config.opt.weight_decay * lr(s),
                                 decay_mask(abstract_params)))
  return optax.chain(*links), lr

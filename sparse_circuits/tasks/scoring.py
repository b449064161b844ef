"""Scoring a task: the logit difference d of the two candidates at a
prompt's last position (under optional node masks: mean ablation), the task
loss softplus(-d) (the binary cross-entropy over the two candidates), the
calibration a*d + b*sign and its sign convention, and the straight-through
hard step of the mask parameters (method.md: the task loss and the mask of
pruning).

One module that tasks, the search and pruning all import, so that none of them
reaches into another for these definitions.
"""

import jax
import jax.numpy as jnp
import numpy as np

from sparse_circuits import model as model_lib


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


def candidate_diff(logits_NxV, target_N, alternative_N):
  """logit[target] - logit[alternative] per row, [N]."""
  take = lambda ids: jnp.take_along_axis(
      logits_NxV, jnp.asarray(ids, jnp.int32)[:, None], axis=-1)[:, 0]
  return take(target_N) - take(alternative_N)


def logit_diff(params, cfg, data_tokens, target, alternative, masks=None,
               means=None, last=None):
  """d = logit[target] - logit[alternative] at the last position, [N]."""
  lg = last_logits(params, cfg, data_tokens, masks, means, last)
  return candidate_diff(lg, target, alternative)


def task_loss(d, xp=jnp):
  """The task loss of logit differences d, elementwise: softplus(-d), the
  binary cross-entropy of the target against the alternative. `xp`: jax.numpy
  (in a program) or numpy (on the host, in d's own precision)."""
  return xp.logaddexp(-d, 0.0)


def calibrate(d, scale, shift, sign):
  """A circuit's calibrated logit difference: scale > 0 sharpens or softens
  d but never reverses it; the shift raises one candidate (`sign`,
  calibration_sign) over the other."""
  return scale * d + shift * sign


def calibration_sign(target, alternative):
  """+1 where the target is the lower token id: the shift b of the
  calibration raises one candidate's logit over the other's."""
  return np.where(np.asarray(target) < np.asarray(alternative), 1.0, -1.0)

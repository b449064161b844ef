"""Scoring a task: the logit difference of the two candidates at a prompt's
last position, under optional node masks (mean ablation), the straight-through
hard step of the mask parameters, and the sign convention of the calibration
(method.md: the task loss and the mask of pruning).

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


def logit_diff(params, cfg, data_tokens, target, alternative, masks=None,
               means=None, last=None):
  """d = logit[target] - logit[alternative] at the last position, [N]."""
  lg = last_logits(params, cfg, data_tokens, masks, means, last)
  return (jnp.take_along_axis(lg, target[:, None], 1)[:, 0] -
          jnp.take_along_axis(lg, alternative[:, None], 1)[:, 0])


def calibration_sign(target, alternative):
  """+1 where the target is the lower token id: the shift b of the
  calibration raises one candidate's logit over the other's."""
  return np.where(np.asarray(target) < np.asarray(alternative), 1.0, -1.0)

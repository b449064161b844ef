"""Steering a dense model through a node of a bridged sparse model's circuit
(paper §3.3, App. A.4, its Figure 9).

For a residual read node (channel c of `{i}.attn.act_in` or `{i}.mlp.act_in`
in the sparse model), the perturbation of the dense residual stream at the
same sublayer input is, at every token t,

  delta(t) = (a_c(counterfactual, t) - a_c(presented, t))
             * decoder_j[c, :] * rms(dense residual) / rms(sparse residual)

with decoder_j the bridge decoder of that sublayer and the two RMS measured on
reference data. The dense model runs on the presented prompt with
strength * delta added to its residual stream (a `model.forward`
intervention), and we read its probability of the counterfactual answer. The
control is a random direction with the same norm at every token.

Dimensions: B batch, L length, D dense width, S sparse width, V vocab.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sparse_circuits import bridge as bridge_lib
from sparse_circuits import model as model_lib
from sparse_circuits import sites as sites_lib


def node_bridge(site: str) -> tuple[int, str]:
  """A residual read site -> (bridge index, residual site it reads)."""
  try:
    j = sites_lib.sublayer_of_read(site)
  except ValueError as e:
    raise ValueError(f"steering needs a residual read node: {e}") from None
  return j, sites_lib.sublayer_sites(j // 2 + 1)[j]


@functools.partial(jax.jit, static_argnames=("cfg", "site"))
def _rms(params, cfg, tokens_BxL, site):
  _, acts = model_lib.forward(params, tokens_BxL, cfg, capture=(site,))
  return jnp.sqrt(jnp.mean(jnp.square(acts[site].astype(jnp.float32))))


def residual_rms(params, cfg, tokens_BxL, site: str) -> float:
  """Root mean square of the residual stream at `site` over the tokens."""
  return float(_rms(params, cfg, tokens_BxL, site))


def rms_ratio(dense_params, dense_cfg, sparse_params, sparse_cfg, tokens_BxL,
              site: str) -> float:
  """rms(dense residual) / rms(sparse residual) at the sublayer that the
  node `site` reads, on reference tokens."""
  _, resid = node_bridge(site)
  return (residual_rms(dense_params, dense_cfg, tokens_BxL, resid)
          / residual_rms(sparse_params, sparse_cfg, tokens_BxL, resid))


@functools.partial(jax.jit, static_argnames=("sparse_cfg", "site"))
def _perturbation(sparse_params, sparse_cfg, row_S, site, channel, presented,
                  counterfactual, ratio):
  acts = [model_lib.forward(sparse_params, t, sparse_cfg, capture=(site,))[1]
          for t in (presented, counterfactual)]
  diff_BxL = acts[1][site][..., channel] - acts[0][site][..., channel]
  return diff_BxL[..., None].astype(jnp.float32) * row_S * ratio


def perturbation(sparse_params, sparse_cfg, bridges, site: str, channel: int,
                 presented_BxL, counterfactual_BxL, ratio: float):
  """delta [B, L, D] for the node (site, channel) (see the module doc)."""
  j, _ = node_bridge(site)
  width = sparse_cfg.d_model
  if not 0 <= channel < width:
    raise ValueError(f"channel {channel} is outside {site} (width {width})")
  if presented_BxL.shape != counterfactual_BxL.shape:
    raise ValueError("presented and counterfactual prompts must be token-"
                     f"aligned: shapes {presented_BxL.shape} vs "
                     f"{counterfactual_BxL.shape}")
  row = bridge_lib.get(bridges, j)["decoder"]["kernel"][channel]
  return _perturbation(sparse_params, sparse_cfg, row, site,
                       jnp.int32(channel), presented_BxL, counterfactual_BxL,
                       jnp.float32(ratio))


def random_like(delta_BxLxD, seed: int):
  """One random unit direction, scaled at every token to delta's norm there."""
  u = jax.random.normal(jax.random.key(seed), delta_BxLxD.shape[-1:])
  u = u / jnp.linalg.norm(u)
  return jnp.linalg.norm(delta_BxLxD, axis=-1, keepdims=True) * u


def steered_logits(dense_params, dense_cfg, tokens_BxL, resid_site: str,
                   delta_BxLxD, strength):
  """The dense model's logits [B, L, V] with strength * delta added to its
  residual stream at `resid_site`."""
  iv = {resid_site: {"add": strength * delta_BxLxD}}
  return model_lib.forward(dense_params, tokens_BxL, dense_cfg,
                           interventions=iv)[0]


@functools.partial(jax.jit, static_argnames=("dense_cfg", "resid_site"))
def _answer_prob(dense_params, dense_cfg, tokens_BxL, resid_site, delta_BxLxD,
                 strength, answer_B, last_B):
  logits = steered_logits(dense_params, dense_cfg, tokens_BxL, resid_site,
                          delta_BxLxD, strength)
  B = tokens_BxL.shape[0]
  logp_BxV = jax.nn.log_softmax(logits[jnp.arange(B), last_B], axis=-1)
  return jnp.exp(logp_BxV[jnp.arange(B), answer_B])


def answer_prob(dense_params, dense_cfg, tokens_BxL, resid_site, delta_BxLxD,
                strengths, answer_B, last_B=None) -> np.ndarray:
  """[len(strengths), B]: the dense model's probability of `answer_B` at each
  prompt's last real token (`last_B`, default the final position) for each
  steering strength (one compiled program for the whole sweep)."""
  B, L = tokens_BxL.shape
  last_B = (jnp.full((B,), L - 1, jnp.int32) if last_B is None
            else jnp.asarray(last_B, jnp.int32))
  answer_B = jnp.asarray(answer_B, jnp.int32)
  return np.stack([np.asarray(_answer_prob(
      dense_params, dense_cfg, tokens_BxL, resid_site, delta_BxLxD,
      jnp.float32(s), answer_B, last_B)) for s in strengths])

"""Bridges between a frozen dense model and a weight-sparse one (paper §2.3,
§3.3, App. A.3).

A bridge sits at every sublayer input (before each attention and each MLP, on
the residual stream before RMSNorm: `model.sublayer_sites`), so an L-layer
pair has 2L of them. Bridge j has an encoder f_j = AbsTopK(linear) from the
dense residual to the sparse one and a decoder g_j = linear back. The sparse
model is trained jointly with them on

  sparse LM loss
  + sum_j NMSE(f_j(h^d_j), h^s_j) + NMSE(g_j(h^s_j), h^d_j)
  + sum_j KL(y_d || sparse sublayers j.. run on f_j(h^d_j))   ("d2s")
  + sum_j KL(y_d || dense sublayers j.. run on g_j(h^s_j))    ("s2d")

where y_d are the dense logits: every hybrid path with one switch point, in
both directions. Each term is returned separately, per bridge, for logging.

Bridge parameters are a plain nested dict beside the sparse model's
(`{"h_{i}": {"attn"|"mlp": {"encoder"|"decoder": {"kernel", "bias"},
"norm": {...}}}}`), so the optimizer, Orbax and the sharding rules treat them
like any other parameters.

Each map is linear (the encoder then AbsTopK), parametrised between fixed
standardisations of its two sides (`norm`: each residual stream's mean and
standard deviation at that sublayer on a batch at init, held constant): a
trained dense model's residual stream is far larger than a fresh sparse
model's and dominated by its mean, so a raw kernel would need entries far
below the size of one Adam step (measured on the tiny pair: the encoder NMSE
went from 2 to 3e5 in one step) and a raw decoder bias would need thousands
of steps to reach the dense mean; standardised, the kernels are O(1/sqrt(d))
and the NMSE terms start near 2.

Choices the paper leaves open, made here: NMSE divides by the target's
variance over the batch with the denominator held constant (so no model can
lower it by inflating its residual stream); gradients otherwise flow into both
models' sides of every term except the frozen dense parameters; the encoder
keeps `encoder_k` channels (0 = no AbsTopK).

Dimensions: B batch, L length, D dense width, S sparse width, V vocab.
"""

import functools
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from sparse_circuits import checkpoints
from sparse_circuits import data
from sparse_circuits import distributed
from sparse_circuits import errors
from sparse_circuits import model as model_lib
from sparse_circuits import runs
from sparse_circuits import sharding
from sparse_circuits import train

SUBLAYERS = ("attn", "mlp")
TERMS = ("nmse_d2s", "nmse_s2d", "kl_d2s", "kl_s2d")


def check_pair(dense_cfg: model_lib.ModelConfig,
               sparse_cfg: model_lib.ModelConfig) -> None:
  """Raises ConfigError if the two models cannot be bridged."""
  for f in ("n_layer", "vocab_size"):
    a, b = getattr(dense_cfg, f), getattr(sparse_cfg, f)
    if a != b:
      raise errors.ConfigError(
          f"config.model.{f}: cannot bridge: the dense model has {f}={a}, "
          f"the sparse model {f}={b}; they must match")


def bridge_key(j: int) -> tuple[str, str]:
  """(layer key, sublayer key) of bridge j: 2i -> (h_i, attn), 2i+1 -> mlp."""
  return f"h_{j // 2}", SUBLAYERS[j % 2]


def init_params(dense_cfg, sparse_cfg, seed: int, stats=None) -> dict:
  """Fresh bridges (float32): kernels N(0, 1/d_in), biases 0, and the
  fixed standardisation of each side (`norm`) from `stats`
  (`residual_stats` of both models at init; without it, mean 0, scale 1)."""
  check_pair(dense_cfg, sparse_cfg)
  D, S = dense_cfg.d_model, sparse_cfg.d_model
  n = 2 * dense_cfg.n_layer
  keys = jax.random.split(jax.random.key(seed), 2 * n)
  out = {}
  for j in range(n):
    if stats is None:
      (mu_d, sd_d), (mu_s, sd_s) = (jnp.zeros((D,)), 1.0), (jnp.zeros((S,)),
                                                              1.0)
    else:
      (mu_d, sd_d), (mu_s, sd_s) = stats["dense"][j], stats["sparse"][j]
    layer, sub = bridge_key(j)
    out.setdefault(layer, {})[sub] = {
        "encoder": {"kernel": jax.random.normal(keys[2 * j], (D, S))
                              / jnp.sqrt(D),
                    "bias": jnp.zeros((S,), jnp.float32)},
        "decoder": {"kernel": jax.random.normal(keys[2 * j + 1], (S, D))
                              / jnp.sqrt(S),
                    "bias": jnp.zeros((D,), jnp.float32)},
        "norm": {"dense_mean": jnp.asarray(mu_d, jnp.float32),
                 "dense_scale": jnp.asarray(sd_d, jnp.float32),
                 "sparse_mean": jnp.asarray(mu_s, jnp.float32),
                 "sparse_scale": jnp.asarray(sd_s, jnp.float32)}}
  return out


@functools.partial(jax.jit, static_argnames=("cfg",))
def _stats(params, cfg, tokens_BxL):
  sites = model_lib.sublayer_sites(cfg)
  _, acts = model_lib.forward(params, tokens_BxL, cfg, capture=sites)
  out = []
  for s in sites:
    h = acts[s].astype(jnp.float32)
    mu = jnp.mean(h, axis=(0, 1))
    out.append((mu, jnp.sqrt(jnp.mean(jnp.square(h - mu))) + 1e-8))
  return out


def residual_stats(dense_params, dense_cfg, sparse_params, sparse_cfg,
                   tokens_BxL) -> dict:
  """Per bridge, (mean [d], standard deviation) of each model's residual
  stream at that sublayer input on some tokens (for `init_params`)."""
  return {"dense": _stats(dense_params, dense_cfg, tokens_BxL),
          "sparse": _stats(sparse_params, sparse_cfg, tokens_BxL)}


def abstract_params(dense_cfg, sparse_cfg) -> dict:
  return jax.eval_shape(lambda: init_params(dense_cfg, sparse_cfg, 0))


def get(bridges: Mapping[str, Any], j: int) -> Mapping[str, Any]:
  layer, sub = bridge_key(j)
  return bridges[layer][sub]


def encode(bridge: Mapping[str, Any], h_BxLxD, encoder_k: int):
  """Dense residual -> sparse residual: AbsTopK of a linear map."""
  n, e = jax.lax.stop_gradient(bridge["norm"]), bridge["encoder"]
  x = (h_BxLxD - n["dense_mean"]) / n["dense_scale"]
  z_BxLxS = ((x @ e["kernel"].astype(x.dtype) + e["bias"])
             * n["sparse_scale"] + n["sparse_mean"])
  return model_lib.abs_topk(z_BxLxS, encoder_k) if encoder_k else z_BxLxS


def decode(bridge: Mapping[str, Any], h_BxLxS):
  """Sparse residual -> dense residual: a linear map."""
  n, d = jax.lax.stop_gradient(bridge["norm"]), bridge["decoder"]
  x = (h_BxLxS - n["sparse_mean"]) / n["sparse_scale"]
  return ((x @ d["kernel"].astype(x.dtype) + d["bias"]) * n["dense_scale"]
          + n["dense_mean"])


def decoder_matrix(bridge: Mapping[str, Any]):
  """The decoder as one linear map on raw residuals: [S, D] kernel (row c:
  what a unit change of sparse channel c does to the dense residual)."""
  n = bridge["norm"]
  return bridge["decoder"]["kernel"] * (n["dense_scale"] / n["sparse_scale"])


def nmse(pred, target):
  """sum (pred - target)^2 / sum (target - its mean)^2 over the batch; the
  denominator is a constant to the gradient."""
  t = target.astype(jnp.float32)
  err = jnp.sum(jnp.square(pred.astype(jnp.float32) - t))
  var = jnp.sum(jnp.square(t - jnp.mean(t, axis=(0, 1), keepdims=True)))
  return err / (jax.lax.stop_gradient(var) + 1e-12)


def kl(target_logits, logits):
  """Mean over tokens of KL(softmax(target) || softmax(logits))."""
  logp = jax.nn.log_softmax(target_logits.astype(jnp.float32), axis=-1)
  logq = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1))


def all_paths(dense_params, sparse_params, bridges, tokens_BxL, dense_cfg,
              sparse_cfg, encoder_k: int = 0, hybrids: bool = True) -> dict:
  """Both models and every one-switch hybrid path on one batch: `dense` and
  `sparse` logits, `d2s` and `s2d` (lists over switch points, logits; empty
  without `hybrids`), and the residuals each bridge sees and makes
  (`h_dense`, `h_sparse`, `enc`, `dec`, lists over bridges)."""
  check_pair(dense_cfg, sparse_cfg)
  sites = model_lib.sublayer_sites(dense_cfg)
  y_d, h_d = model_lib.forward(dense_params, tokens_BxL, dense_cfg,
                               capture=sites)
  y_s, h_s = model_lib.forward(sparse_params, tokens_BxL, sparse_cfg,
                               capture=sites)
  out = dict(dense=y_d, sparse=y_s, d2s=[], s2d=[], h_dense=[], h_sparse=[],
             enc=[], dec=[])
  for j, site in enumerate(sites):
    b = get(bridges, j)
    enc, dec = encode(b, h_d[site], encoder_k), decode(b, h_s[site])
    out["h_dense"].append(h_d[site])
    out["h_sparse"].append(h_s[site])
    out["enc"].append(enc)
    out["dec"].append(dec)
    if not hybrids:
      continue
    out["d2s"].append(model_lib.forward_from(
        sparse_params, enc, tokens_BxL, sparse_cfg, j)[0])
    out["s2d"].append(model_lib.forward_from(
        dense_params, dec, tokens_BxL, dense_cfg, j)[0])
  return out


def loss(sparse_params, bridges, dense_params, batch_BxL1, dense_cfg,
         sparse_cfg, encoder_k: int = 0,
         coefs: Mapping[str, float] | None = None, switch=None):
  """(total, terms): `terms` holds the sparse model's own `lm` loss and, per
  bridge j (arrays of length 2L), `nmse_d2s` (encoder), `nmse_s2d`
  (decoder), `kl_d2s` and `kl_s2d`. `coefs` weights the four families
  (default 1 each); the dense parameters get no gradient.

  With `switch` (a bridge index, may be traced) only that switch point's two
  hybrid paths run: the KL arrays hold their values at `switch` and 0
  elsewhere, and count 2L times in the total, so that cycling `switch`
  through 0..2L-1 gives the full sum's gradient over a cycle, a step at
  0.55 of the cost (the gradient on the tiny shapes, batch 32; 4.9 times an
  LM-only step with every path, 2.7 with one: `bridge.kl_paths = "cycle"`)."""
  coefs = {**{t: 1.0 for t in TERMS}, **(coefs or {})}
  unknown = set(coefs) - set(TERMS)
  if unknown:
    raise errors.ConfigError(
        f"config.bridge.coefs: unknown term(s) {sorted(unknown)}; known: "
        f"{TERMS}")
  dense_params = jax.lax.stop_gradient(dense_params)
  tokens = batch_BxL1[:, :-1]
  p = all_paths(dense_params, sparse_params, bridges, tokens, dense_cfg,
                sparse_cfg, encoder_k, hybrids=switch is None)
  y_d, n = p["dense"], len(p["enc"])
  terms = {
      "nmse_d2s": [nmse(e, h) for e, h in zip(p["enc"], p["h_sparse"])],
      "nmse_s2d": [nmse(d, h) for d, h in zip(p["dec"], p["h_dense"])],
      "kl_d2s": [kl(y_d, y) for y in p["d2s"]],
      "kl_s2d": [kl(y_d, y) for y in p["s2d"]],
  }
  weight = 1
  if switch is not None:
    def path(j):
      return lambda: jnp.stack([
          kl(y_d, model_lib.forward_from(sparse_params, p["enc"][j], tokens,
                                         sparse_cfg, j)[0]),
          kl(y_d, model_lib.forward_from(dense_params, p["dec"][j], tokens,
                                         dense_cfg, j)[0])])
    both = jax.lax.switch(switch, [path(j) for j in range(n)])
    at = jnp.arange(n) == switch
    terms["kl_d2s"] = jnp.where(at, both[0], 0.0)
    terms["kl_s2d"] = jnp.where(at, both[1], 0.0)
    weight = n
  terms = {t: jnp.stack(v) for t, v in terms.items()}
  terms["lm"] = jnp.mean(model_lib.token_nll(p["sparse"], batch_BxL1[:, 1:]))
  total = terms["lm"] + sum(
      coefs[t] * jnp.sum(terms[t]) * (weight if t.startswith("kl") else 1)
      for t in TERMS)
  return total, terms


# ---------------------------------------------------------------- the mode


def metrics(terms, cycle: bool = False) -> dict:
  """Scalars for the metrics log: each family's sum and each bridge's value
  (`kl_d2s/3`), and the sparse model's own LM loss as `lm_loss`. With
  `cycle`, the KL sums are 2L times the one path run (an estimate) and the
  KL per bridge is not logged."""
  out = {"lm_loss": terms["lm"]}
  for t in TERMS:
    if cycle and t.startswith("kl"):
      out[t] = jnp.sum(terms[t]) * terms[t].shape[0]
      continue
    out[t] = jnp.sum(terms[t])
    for j in range(terms[t].shape[0]):
      out[f"{t}/{j}"] = terms[t][j]
  return out


def objective(config, dense_run, init_tokens_BxL=None):
  """The `train.Objective` of a bridged run: the sparse model of `config`
  and its bridges, trained against `dense_run` (a `runs.Run`, frozen). With
  `init_tokens_BxL` (pretraining text), fresh bridges start from both
  models' residual statistics there (see `init_params`)."""
  dense_cfg, sparse_cfg = dense_run.cfg, runs.model_config(config)
  check_pair(dense_cfg, sparse_cfg)
  if dense_cfg.block_size < sparse_cfg.block_size:
    raise errors.ConfigError(
        f"config.model.block_size={sparse_cfg.block_size} exceeds the dense "
        f"model's context ({dense_cfg.block_size}); it cannot read such "
        "windows")
  mesh = sharding.make_mesh(config.mesh)
  frozen_sh = sharding.tree_shardings(
      model_lib.abstract_params(dense_cfg), mesh,
      [tuple(r) for r in config.mesh.rules])
  encoder_k = int(config.bridge.encoder_afrac * sparse_cfg.d_model)
  coefs = dict(config.bridge.coefs)

  stats = None
  if init_tokens_BxL is not None:  # the fresh sparse model train.run makes
    stats = jax.device_get(residual_stats(
        dense_run.params, dense_cfg,
        model_lib.init_params(sparse_cfg, config.seed), sparse_cfg,
        jnp.asarray(init_tokens_BxL)))

  def init_extras(seed):
    return {"bridges": init_params(dense_cfg, sparse_cfg, seed + 1, stats)}

  cycle = config.bridge.kl_paths == "cycle"
  n = 2 * dense_cfg.n_layer

  def loss_fn(state, dense_params, batch, step):
    total, terms = loss(state["model"], state["bridges"], dense_params, batch,
                        dense_cfg, sparse_cfg, encoder_k, coefs,
                        switch=step % n if cycle else None)
    return total, metrics(terms, cycle)

  return train.Objective(
      abstract_extras={"bridges": abstract_params(dense_cfg, sparse_cfg)},
      init_extras=init_extras,
      loss=loss_fn, frozen=jax.device_put(dense_run.params, frozen_sh),
      frozen_shardings=frozen_sh)


def _bridged_config(config, dense_workdir: str, tokenizer_dir: str):
  """The config with the dense run's path made absolute and its tokenizer
  (a bridged model must read the dense model's token ids)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.bridge.dense_workdir = os.path.abspath(dense_workdir)
    if not config.data.tokenizer_dir:
      config.data.tokenizer_dir = os.path.abspath(tokenizer_dir)
  return config


def run(config, workdir: str):
  """`--mode=bridge`: trains (or resumes) the sparse model of `config` with
  bridges to the frozen dense run `config.bridge.dense_workdir`, with the
  training loop of `--mode=train` (sparsity, optimizer, sharding, resumable
  checkpoints, preemption, metrics). The bridges are
  saved beside the params."""
  dense_wd = config.bridge.dense_workdir
  if not dense_wd:
    raise errors.ConfigError(
        "config.bridge.dense_workdir is empty: name the dense run to bridge "
        "to (one of ours, or one --mode=import'ed)")
  dense = runs.load(dense_wd)
  config = _bridged_config(config, dense_wd,
                           runs.tokenizer_dir(dense.config, dense_wd))
  info = distributed.primary_first(data.prepare, config, workdir)
  init_tokens = data.eval_batches(config, info, 1)[0][:, :-1]
  return train.run(config, workdir,
                   objective=objective(config, dense, init_tokens))


def restore(workdir: str, dense_cfg, sparse_cfg, step=None) -> dict:
  """A bridged run's bridges (the latest checkpoint, or `step`)."""
  return checkpoints.restore_extra(
      workdir, "bridges", abstract_params(dense_cfg, sparse_cfg), step)

"""Steering a dense model through a node of a bridged sparse model's circuit
(paper §3.3, App. A.4, its Figure 9).

For a residual read node (channel c of `{i}.attn.act_in` or `{i}.mlp.act_in`
in the sparse model), the perturbation of the dense residual stream at the
same sublayer input is, at every token t,

  delta(t) = (a_c(counterfactual, t) - a_c(presented, t))
             * rms(sparse residual) / g_c * decoder_j[c, :]

The node's activation a_c is read after RMSNorm (a_c = g_c x_c / rms(x),
g_c the norm's gain), so rms(sparse residual) / g_c (the RMS on reference
data) turns its change into a change of the raw sparse residual channel,
and decoder_j (the bridge decoder of that sublayer, as one linear map on raw
residuals: `bridge.decoder_matrix`) carries that into the dense residual.
The paper rescales "by the ratio of the two models' residual RMS": in the
RMS-normalised frame its decoder row is decoder_j[c] * rms_s / rms_d and the
result is scaled back by rms_d, which is the same delta. (Multiplying our
raw-frame row by rms_d / rms_s once more counts that ratio twice: on the
tiny pair, where it is 12 to 690, the perturbation came out 50 to 3000
times the dense residual's own norm and drove the bridge and random curves
down alike.)

The dense model runs on the presented prompt with strength * delta added to
its residual stream (a `model.forward` intervention), and we read its
probability of the counterfactual's answer, over the whole vocabulary and
between the task's two candidates. The control is a random direction with
the same norm at every token.

Dimensions: B batch, L length, D dense width, S sparse width, V vocab.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from sparse_circuits import data as data_lib
from sparse_circuits import errors
from sparse_circuits import model as model_lib
from sparse_circuits import reporting
from sparse_circuits import runs
from sparse_circuits import sites as sites_lib
from sparse_circuits import viz
from sparse_circuits.experiments import bridge as bridge_lib

_log = reporting.get(__name__)


def node_bridge(site: str) -> tuple[int, str]:
  """A residual read site -> (bridge index, residual site it reads)."""
  try:
    j = sites_lib.sublayer_of_read(site)
  except ValueError as e:
    raise errors.ConfigError(
        f"steering needs a residual read node: {e}") from None
  return j, sites_lib.sublayer_sites(j // 2 + 1)[j]


@functools.partial(jax.jit, static_argnames=("cfg", "site"))
def _rms(params, cfg, tokens_BxL, site):
  _, acts = model_lib.forward(params, tokens_BxL, cfg, capture=(site,))
  return jnp.sqrt(jnp.mean(jnp.square(acts[site].astype(jnp.float32))))


def residual_rms(params, cfg, tokens_BxL, site: str) -> float:
  """Root mean square of the residual stream at `site` over the tokens."""
  return float(_rms(params, cfg, tokens_BxL, site))


def channel_scale(sparse_params, sparse_cfg, tokens_BxL, site: str,
                  channel: int) -> float:
  """rms(sparse residual) / g_c: the raw residual change per unit change of
  the normalised read channel (site, channel), RMS on reference tokens."""
  j, resid = node_bridge(site)
  norm = "ln_1" if j % 2 == 0 else "ln_2"
  gain = float(sparse_params[f"h_{j // 2}"][norm]["weight"][channel])
  if abs(gain) < 1e-12:
    raise errors.ConfigError(
        f"config.steer.node: {site}:{channel} has a zero RMSNorm gain: no "
        "change of its activation maps to the residual stream")
  return residual_rms(sparse_params, sparse_cfg, tokens_BxL, resid) / gain


@functools.partial(jax.jit, static_argnames=("sparse_cfg", "site"))
def _perturbation(sparse_params, sparse_cfg, row_D, site, channel, presented,
                  counterfactual, scale):
  acts = [model_lib.forward(sparse_params, t, sparse_cfg, capture=(site,))[1]
          for t in (presented, counterfactual)]
  diff_BxL = acts[1][site][..., channel] - acts[0][site][..., channel]
  return diff_BxL[..., None].astype(jnp.float32) * scale * row_D


def perturbation(sparse_params, sparse_cfg, bridges, site: str, channel: int,
                 presented_BxL, counterfactual_BxL, scale: float):
  """delta [B, L, D] for the node (site, channel), `scale` from
  `channel_scale` (see the module doc)."""
  j, _ = node_bridge(site)
  width = sparse_cfg.d_model
  if not 0 <= channel < width:
    raise errors.ConfigError(
        f"config.steer.node: channel {channel} is outside {site} (width "
        f"{width})")
  if presented_BxL.shape != counterfactual_BxL.shape:
    raise ValueError("presented and counterfactual prompts must be token-"
                     f"aligned: shapes {presented_BxL.shape} vs "
                     f"{counterfactual_BxL.shape}")
  row = bridge_lib.decoder_matrix(bridge_lib.get(bridges, j))[channel]
  return _perturbation(sparse_params, sparse_cfg, row, site,
                       jnp.int32(channel), presented_BxL, counterfactual_BxL,
                       jnp.float32(scale))


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
def _answer_probs(dense_params, dense_cfg, tokens_BxL, resid_site,
                  delta_BxLxD, strength, answers_BxK, last_B):
  logits = steered_logits(dense_params, dense_cfg, tokens_BxL, resid_site,
                          delta_BxLxD, strength)
  B = tokens_BxL.shape[0]
  logp_BxV = jax.nn.log_softmax(logits[jnp.arange(B), last_B], axis=-1)
  return jnp.exp(jnp.take_along_axis(logp_BxV, answers_BxK, axis=1))


def answer_probs(dense_params, dense_cfg, tokens_BxL, resid_site,
                 delta_BxLxD, strengths, answers_BxK,
                 last_B=None) -> np.ndarray:
  """[len(strengths), B, K]: the dense model's probability of each of
  `answers_BxK` at each prompt's last real token (`last_B`, default the
  final position) for each steering strength (one compiled program)."""
  B, L = tokens_BxL.shape
  last_B = (jnp.full((B,), L - 1, jnp.int32) if last_B is None
            else jnp.asarray(last_B, jnp.int32))
  answers_BxK = jnp.asarray(answers_BxK, jnp.int32)
  return np.stack([np.asarray(_answer_probs(
      dense_params, dense_cfg, tokens_BxL, resid_site, delta_BxLxD,
      jnp.float32(s), answers_BxK, last_B)) for s in strengths])


# ---------------------------------------------------------------- the mode


def pick_node(circuit_doc: dict, node: str = "") -> dict:
  """The node to steer through: `node` ("site:index") if given, else the
  circuit's residual read node with the largest ablation effect."""
  if node:
    site, _, index = node.rpartition(":")
    if not site or not index.isdigit():
      raise errors.ConfigError(
          f"config.steer.node={node!r}: want 'site:index', e.g. "
          "'1.attn.act_in:17'")
    node_bridge(site)  # a residual read site, or a clear error
    for n in circuit_doc.get("nodes", []):
      if n["site"] == site and n["index"] == int(index):
        return n
    return {"site": site, "index": int(index), "ablation_delta": None}
  reads = [n for n in circuit_doc.get("nodes", [])
           if sites_lib.kind(n["site"]) == "resid_read"]
  if not reads:
    raise errors.ConfigError(
        f"the circuit of {circuit_doc['task']['name']!r} keeps no residual "
        "read node (attn.act_in / mlp.act_in)",
        hint="name one with --config.steer.node=SITE:INDEX")
  return max(reads, key=lambda n: (n.get("ablation_delta") is not None,
                                   n.get("ablation_delta") or 0.0,
                                   n.get("tau", 0.0)))


def pairs(data):
  """(rows, partner rows, last positions) of the prompts whose pair partner
  has the same length, so that the two align token by token."""
  n = len(data.target) - len(data.target) % 2
  last = getattr(data, "last", None)
  last = (np.full(n, data.tokens.shape[1] - 1, np.int32) if last is None
          else np.asarray(last[:n], np.int32))
  rows = np.arange(n)
  partner = rows ^ 1
  keep = last[rows] == last[partner]
  return rows[keep], partner[keep], last[keep]


def _curves(probs_SxBx2) -> dict:
  """Means over prompts: P(counterfactual answer) over the vocabulary, and
  between the two candidates (the task's own two-way choice)."""
  p = probs_SxBx2.astype(np.float64)
  return {"vocab": [float(x) for x in p[..., 0].mean(axis=1)],
          "binary": [float(x) for x in
                     (p[..., 0] / (p[..., 0] + p[..., 1])).mean(axis=1)]}


def sweep(dense_params, dense_cfg, sparse_params, sparse_cfg, bridges, node,
          data, reference_BxL, strengths, seeds) -> dict:
  """Dense P(counterfactual answer) vs strength through `node` and through
  random directions of the same norm (one curve per seed)."""
  site, channel = node["site"], int(node["index"])
  j, resid = node_bridge(site)
  rows, partner, last = pairs(data)
  if not len(rows):
    raise errors.ConfigError(
        "config.steer.task: no prompt pair of equal length to steer with")
  tokens = jnp.asarray(data.tokens)
  presented, counterfactual = tokens[rows], tokens[partner]
  target = np.asarray(data.target)
  answers = np.stack([target[partner], target[rows]], axis=1)  # cf, own
  scale = channel_scale(sparse_params, sparse_cfg, reference_BxL, site,
                        channel)
  delta = perturbation(sparse_params, sparse_cfg, bridges, site, channel,
                       presented, counterfactual, scale)
  curves = lambda d: _curves(answer_probs(
      dense_params, dense_cfg, presented, resid, d, strengths, answers, last))
  bridge_curves = curves(delta)
  random = {int(s): curves(random_like(delta, int(s))) for s in seeds}
  norms = np.asarray(jnp.linalg.norm(delta, axis=-1))
  rms_d = residual_rms(dense_params, dense_cfg, reference_BxL, resid)
  rms_s = residual_rms(sparse_params, sparse_cfg, reference_BxL, resid)
  out = {
      "node": {k: node.get(k) for k in ("site", "index", "ablation_delta",
                                        "tau")},
      "bridge": j, "dense_site": resid, "n_prompts": int(len(rows)),
      "rms_dense": rms_d, "rms_sparse": rms_s, "channel_scale": scale,
      "delta_norm_mean": float(norms.mean()),
      "strengths": [float(s) for s in strengths],
  }
  for kind, name in (("vocab", "p_counterfactual"),
                     ("binary", "p_counterfactual_binary")):
    out[name] = bridge_curves[kind]
    out[f"{name}_random"] = {s: c[kind] for s, c in random.items()}
    out[f"{name}_random_mean"] = [
        float(x) for x in np.mean([c[kind] for c in random.values()], axis=0)]
  return out


def run(config, workdir: str) -> dict:
  """`--mode=steer`: WORKDIR is a bridged sparse run (--mode=bridge) with a
  circuit for config.steer.task (--mode=prune). Writes
  WORKDIR/circuits/<task>/steer.json and adds the plot to that circuit's
  page."""
  st = config.steer
  sparse = runs.load(workdir, overlay=config)
  # The dense run the bridges were trained against (stored in the bridged
  # run's config); the command line's only if that one has moved away.
  stored = (sparse.config.bridge.dense_workdir
            if "bridge" in sparse.config else "")
  dense_wd = stored if stored and os.path.isdir(stored) else (
      config.bridge.dense_workdir if "bridge" in config else "")
  if not dense_wd:
    raise errors.ConfigError(
        f"config.bridge.dense_workdir: {workdir} names no dense run (is it a "
        "--mode=bridge run?)", hint="set --config.bridge.dense_workdir")
  dense = runs.load(dense_wd)
  bridges = bridge_lib.restore(workdir, dense.cfg, sparse.cfg, sparse.step)
  circ = sparse.circuit(st.task)
  node = pick_node(circ.doc, st.node)
  info = data_lib.prepare(sparse.config, workdir, reuse=True)
  reference = np.concatenate(data_lib.eval_batches(
      sparse.config, info, st.reference_batches))[:, :-1]
  doc = sweep(dense.params, dense.cfg, sparse.params, sparse.cfg, bridges,
              node, circ.task().test, jnp.asarray(reference), st.strengths,
              st.random_seeds)
  doc = {"task": st.task, "dense_workdir": os.path.abspath(dense_wd),
         "dense_step": dense.step, "sparse_step": sparse.step, **doc}
  out_dir = os.path.join(workdir, "circuits", st.task)
  path = reporting.write_json(os.path.join(out_dir, "steer.json"), doc)
  page = viz.write_circuit_page(
      circ.doc, os.path.join(out_dir, "index.html"),
      viz.read_metrics(os.path.join(workdir, "metrics.jsonl")),
      index_href="../../index.html", steer=doc)
  p = doc["p_counterfactual_binary"]
  r = doc["p_counterfactual_binary_random_mean"]
  _log.info(f"steer {st.task} through {node['site']}:{node['index']} "
            f"({doc['n_prompts']} prompts): P(counterfactual answer of the "
            f"two) {p[0]:.4f} -> {p[-1]:.4f} at strength "
            f"{doc['strengths'][-1]:g}; random direction {r[0]:.4f} -> "
            f"{r[-1]:.4f}; wrote {path}, {page}")
  return doc

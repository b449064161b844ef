"""Circuits as graphs: node sites, edges from the sparse weights, circuit.json.

Nodes (method.md §5): residual read channels (`attn.act_in`, `mlp.act_in`),
q/k/v channels, MLP neurons (`mlp.post_act`) and residual write channels
(`attn.resid_delta`, `mlp.resid_delta`). Edges are the nonzero weights between
two kept nodes, plus residual edges from a write channel to the read channel
of the same index in any later read site (weighted by that read's norm scale).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sparse_circuits import model as model_lib
from sparse_circuits import sites as sites_lib

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Site:
  name: str      # e.g. "1.mlp.post_act"
  layer: int
  kind: str
  width: int
  order: int     # position in forward order, for residual edges


def node_sites(cfg: model_lib.ModelConfig) -> list[Site]:
  """Every node site of the model in forward order."""
  hd = cfg.n_head * cfg.d_head
  widths = {"resid_read": cfg.d_model, "resid_write": cfg.d_model, "q": hd,
            "k": hd, "v": hd, "mlp_neuron": cfg.d_mlp}
  out = []
  for layer in range(cfg.n_layer):
    for suffix, kind in sites_lib.NODE_KINDS.items():
      out.append(Site(f"{layer}.{suffix}", layer, kind, widths[kind],
                      len(out)))
  return out


def node_id(site: str, index: int) -> str:
  return f"{site}:{index}"


def _np(x):
  return np.asarray(x, np.float64)


def edges(params, cfg: model_lib.ModelConfig,
          kept: dict[str, np.ndarray]) -> list[dict]:
  """Edges among kept nodes. `kept` maps site name -> bool [width]."""
  hd = cfg.n_head * cfg.d_head
  out = []

  def add(src_site, dst_site, w, kind="weight"):
    src, dst = kept.get(src_site), kept.get(dst_site)
    if src is None or dst is None or not src.any() or not dst.any():
      return
    for i in np.nonzero(src)[0]:
      for j in np.nonzero(dst)[0]:
        if w[i, j] != 0:
          out.append({"source": node_id(src_site, int(i)),
                      "target": node_id(dst_site, int(j)),
                      "weight": float(w[i, j]), "kind": kind})

  for layer in range(cfg.n_layer):
    blk = params[f"h_{layer}"]
    c_attn = _np(blk["attn"]["c_attn"]["kernel"])
    for n, part in enumerate("qkv"):
      add(f"{layer}.attn.act_in", f"{layer}.attn.{part}",
          c_attn[:, n * hd:(n + 1) * hd])
    add(f"{layer}.attn.v", f"{layer}.attn.resid_delta",
        _np(blk["attn"]["c_proj"]["kernel"]))
    add(f"{layer}.mlp.act_in", f"{layer}.mlp.post_act",
        _np(blk["mlp"]["c_fc"]["kernel"]))
    add(f"{layer}.mlp.post_act", f"{layer}.mlp.resid_delta",
        _np(blk["mlp"]["c_proj"]["kernel"]))
  # Residual: a write reaches every later read of the same channel.
  sites = node_sites(cfg)
  for w_site in (s for s in sites if s.kind == "resid_write"):
    for r_site in (s for s in sites if s.kind == "resid_read" and
                   s.order > w_site.order):
      ln = "ln_1" if r_site.name.endswith("attn.act_in") else "ln_2"
      scale = _np(params[f"h_{r_site.layer}"][ln]["weight"])
      add(w_site.name, r_site.name, np.diag(scale), kind="residual")
  return out


def nodes(cfg, kept, tau, means) -> list[dict]:
  """Node records of the kept nodes (tau and mean from the pruning)."""
  hd = cfg.d_head
  out = []
  for s in node_sites(cfg):
    for i in np.nonzero(kept.get(s.name, np.zeros(0, bool)))[0]:
      out.append({
          "id": node_id(s.name, int(i)), "site": s.name, "layer": s.layer,
          "kind": s.kind, "index": int(i),
          "head": int(i) // hd if s.kind in ("q", "k", "v") else None,
          "tau": float(tau[s.name][i]), "mean": float(means[s.name][i])})
  return out


def _capture(params, cfg, tokens, names):
  _, acts = jax.jit(lambda t: model_lib.forward(params, t, cfg,
                                                capture=names))(
                                                    jnp.asarray(tokens))
  return {k: np.asarray(v) for k, v in acts.items()}


def annotate(node_recs, params, cfg, task, tok, heldout, evaluator, keep,
             n_examples=3, n_snippets=3, max_ablations=64, max_annotated=256):
  """Adds example_acts, top_snippets and ablation_delta to node records
  (the `max_annotated` of largest tau only, so that a circuit that missed
  its target and kept thousands of nodes still gives a page that loads)."""
  node_recs = sorted(node_recs, key=lambda n: -n["tau"])[:max_annotated]
  names = tuple(sorted({n["site"] for n in node_recs}))
  if not names:
    return
  data = task.test
  rows = list(range(min(2 * n_examples, len(data.target))))
  acts = _capture(params, cfg, data.tokens[rows], names)
  ends = [int(data.last[r]) + 1 for r in rows]  # prompts are right-padded
  held = heldout[:, :-1][:32]
  hacts = _capture(params, cfg, held, names)
  base = evaluator.loss(keep)
  for n_i, rec in enumerate(node_recs):
    s, i = rec["site"], rec["index"]
    rec["example_acts"] = [
        {"acts": acts[s][a, :ends[a], i].round(4).tolist(),
         "pair_acts": acts[s][a + 1, :ends[a + 1], i].round(4).tolist()}
        for a in range(0, len(rows) - 1, 2)]
    h = hacts[s][..., i]
    top = np.argsort(-h.reshape(-1), kind="stable")[:n_snippets]
    snippets = []
    for flat in top:
      b, p = divmod(int(flat), h.shape[1])
      lo, hi = max(0, p - 12), min(h.shape[1], p + 4)
      snippets.append({"tokens": [tok.token_str(int(t)) for t in held[b, lo:hi]],
                       "acts": h[b, lo:hi].round(4).tolist(),
                       "peak": p - lo})
    rec["top_snippets"] = snippets
    if n_i < max_ablations:
      minus = {k: v.copy() for k, v in keep.items()}
      minus[s][i] = False
      rec["ablation_delta"] = evaluator.loss(minus) - base
    else:
      rec["ablation_delta"] = None


def _examples(task, tok, n=3):
  data = task.test
  out = []
  for a in range(0, min(2 * n, len(data.target)) - 1, 2):
    out.append({
        "prompt_tokens": [tok.token_str(int(t)) for t in data.prompt(a)],
        "target": tok.token_str(int(data.target[a])),
        "alternative": tok.token_str(int(data.alternative[a])),
        "pair_prompt_tokens": [tok.token_str(int(t))
                               for t in data.prompt(a + 1)],
        "pair_target": tok.token_str(int(data.target[a + 1])),
        "pair_alternative": tok.token_str(int(data.alternative[a + 1]))})
  return out


def document(params, cfg, task, res, means, control, tok, heldout,
             model_info, prune_config) -> dict:
  """The circuit.json document (schema in the README)."""
  keep = res["keep"]
  node_recs = nodes(cfg, keep, res["tau"], means)
  annotate(node_recs, params, cfg, task, tok, heldout, res["evaluator"], keep)
  edge_recs = edges(params, cfg, keep)
  losses = dict(res["losses"])
  losses["random_init_control"] = None if control is None else control["loss"]
  return {
      "schema_version": SCHEMA_VERSION,
      "task": {"name": task.name, "description": task.description,
               "target_loss": res["losses"]["target"],
               "n_train": int(len(task.train.target)),
               "n_test": int(len(task.test.target)),
               "examples": _examples(task, tok)},
      "model": model_info,
      "prune_config": prune_config,
      "selected_setting": res["setting"],
      "target_reached": bool(res["reached"]),
      "sweep": res["sweep"],
      "random_init_control": control,
      "nodes": node_recs,
      "edges": edge_recs,
      "counts": {"nodes": len(node_recs), "edges": len(edge_recs),
                 "total_nodes": int(sum(s.width for s in node_sites(cfg)))},
      "losses": losses,
      "loss_vs_k": res["loss_vs_k"],
      "search_seconds": res["search_seconds"],
  }

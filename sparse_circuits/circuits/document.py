"""Circuits as graphs: node sites, edges from the sparse weights, circuit.json.

Nodes (method.md §5): residual read channels (`attn.act_in`, `mlp.act_in`),
q/k/v channels, MLP neurons (`mlp.post_act`) and residual write channels
(`attn.resid_delta`, `mlp.resid_delta`).

Edges, counted as the paper counts them (schema_version 2; version 1 added
the residual connections into `counts.edges`): `counts.edges` is the number
of nonzero weights between two kept nodes, where the token embedding and
the unembedding count as nodes too:
- "weight": inside a block (read -> q/k/v, v -> attention write, read ->
  MLP neuron -> MLP write), the entry of c_attn / c_proj / c_fc;
- "embedding": input token t -> kept read of channel c, wte[t, c] (times the
  read's norm scale), for the task's input tokens: those that tell a pair's
  two prompts apart in at least 10% of its pairs (the rest is shared by both
  prompts and cannot decide the answer). The position embedding and the
  dense bigram table (a direct token -> logit path outside every node) are
  not counted;
- "unembedding": kept write of channel c -> the logit of a candidate token
  v (every target and alternative of the task), lm_head[c, v] (times the
  final norm's scale).
A write channel also reaches every later read of the same channel through
the residual stream: that is a connection, not a weight, so these
"residual" edges (weighted by the read's norm scale) are drawn but counted
apart, in `counts.residual_edges`. `counts.pairs` counts the pairs of kept
nodes (and the task's tokens) that a weight of these kinds could join,
zero weights included: edges / pairs is the circuit's density.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sparse_circuits import model as model_lib
from sparse_circuits import sites as sites_lib

SCHEMA_VERSION = 2
INPUT_PAIR_FRACTION = 0.1  # an input token tells apart >= 10% of pairs


def _np(x):
  return np.asarray(x, np.float64)


def io_tokens(task, eot_id=None) -> dict[str, list[int]]:
  """The task's input tokens (those that tell a pair's prompts apart in at
  least INPUT_PAIR_FRACTION of its pairs) and candidate tokens."""
  counts, n_pairs = {}, 0
  for data in (task.train, task.test):
    for a in range(0, len(data.target) - 1, 2):
      diff = set(data.tokens[a].tolist()) ^ set(data.tokens[a + 1].tolist())
      for t in diff - {eot_id}:
        counts[t] = counts.get(t, 0) + 1
      n_pairs += 1
  cand = set(task.train.target.tolist()) | set(
      task.train.alternative.tolist())
  return {"embed": sorted(t for t, c in counts.items()
                          if c >= INPUT_PAIR_FRACTION * n_pairs),
          "logit": sorted(int(t) for t in cand)}


def _blocks(params, cfg: model_lib.ModelConfig, kept: dict[str, np.ndarray],
            io: dict[str, list[int]] | None = None):
  """Every block of weights between kept nodes: (kind, source ids, target
  ids, weights [sources, targets]), the kinds of `edges`."""
  hd = cfg.n_head * cfg.d_head

  def block(src_site, dst_site, w, kind="weight", src_ids=None, dst_ids=None):
    ends = []
    for site, ids in ((src_site, src_ids), (dst_site, dst_ids)):
      if ids is not None:
        ends.append((np.arange(len(ids)), list(ids)))
        continue
      on = kept.get(site)
      idx = np.zeros(0, int) if on is None else np.nonzero(on)[0]
      ends.append((idx, [sites_lib.node_id(site, int(i)) for i in idx]))
    (si, sids), (di, dids) = ends
    if len(si) and len(di):
      yield kind, sids, dids, w[np.ix_(si, di)]

  for layer in range(cfg.n_layer):
    blk = params[f"h_{layer}"]
    c_attn = _np(blk["attn"]["c_attn"]["kernel"])
    for n, part in enumerate("qkv"):
      yield from block(f"{layer}.attn.act_in", f"{layer}.attn.{part}",
                       c_attn[:, n * hd:(n + 1) * hd])
    yield from block(f"{layer}.attn.v", f"{layer}.attn.resid_delta",
                     _np(blk["attn"]["c_proj"]["kernel"]))
    yield from block(f"{layer}.mlp.act_in", f"{layer}.mlp.post_act",
                     _np(blk["mlp"]["c_fc"]["kernel"]))
    yield from block(f"{layer}.mlp.post_act", f"{layer}.mlp.resid_delta",
                     _np(blk["mlp"]["c_proj"]["kernel"]))
  sites = sites_lib.node_sites(cfg)
  reads = [s for s in sites if s.kind == "resid_read"]
  writes = [s for s in sites if s.kind == "resid_write"]

  def read_scale(r_site):
    ln = "ln_1" if r_site.name.endswith("attn.act_in") else "ln_2"
    return _np(params[f"h_{r_site.layer}"][ln]["weight"])

  io = io or {"embed": [], "logit": []}
  if io["embed"]:
    wte = _np(params["wte"]["embedding"])[io["embed"]]
    ids = [f"embed:{t}" for t in io["embed"]]
    for r_site in reads:
      yield from block(None, r_site.name, wte * read_scale(r_site),
                       "embedding", src_ids=ids)
  if io["logit"]:
    w = (_np(params["ln_f"]["weight"])[:, None] *
         _np(params["lm_head"]["kernel"])[:, io["logit"]])
    ids = [f"logit:{t}" for t in io["logit"]]
    for w_site in writes:
      yield from block(w_site.name, None, w, "unembedding", dst_ids=ids)
  # Residual: a write reaches every later read of the same channel.
  for w_site in writes:
    for r_site in (s for s in reads if s.order > w_site.order):
      yield from block(w_site.name, r_site.name, np.diag(read_scale(r_site)),
                       "residual")


def edges(params, cfg: model_lib.ModelConfig, kept: dict[str, np.ndarray],
          io: dict[str, list[int]] | None = None) -> list[dict]:
  """Edges among kept nodes (`kept`: site name -> bool [width]), with kind
  "weight", "embedding", "unembedding" (all nonzero weights) or "residual";
  io: the input and candidate tokens (`io_tokens`), none if omitted."""
  out = []
  for kind, src, dst, w in _blocks(params, cfg, kept, io):
    for i, j in zip(*np.nonzero(w)):
      out.append({"source": src[i], "target": dst[j],
                  "weight": float(w[i, j]), "kind": kind})
  return out


def connectable_pairs(params, cfg: model_lib.ModelConfig,
                      kept: dict[str, np.ndarray],
                      io: dict[str, list[int]] | None = None) -> dict:
  """Pairs of kept nodes a weight could join, by kind, zero weights
  included (`edges` are the nonzero ones): {"pairs", "pairs_by_kind"}.
  Residual connections are not weights and not counted."""
  by_kind = {}
  for kind, _, _, w in _blocks(params, cfg, kept, io):
    if kind != "residual":
      by_kind[kind] = by_kind.get(kind, 0) + int(w.size)
  return {"pairs": sum(by_kind.values()), "pairs_by_kind": by_kind}


def edges_and_counts(params, cfg: model_lib.ModelConfig,
                     kept: dict[str, np.ndarray],
                     io: dict[str, list[int]] | None = None
                     ) -> tuple[list[dict], dict]:
  """(`edges`, their counts as circuit.json's `counts` holds them: the
  `edge_counts` and the `connectable_pairs`), for our circuits and
  imported ones alike."""
  recs = edges(params, cfg, kept, io)
  return recs, {**edge_counts(recs),
                **connectable_pairs(params, cfg, kept, io)}


def io_nodes(edge_recs, tok=None) -> list[dict]:
  """The embedding and unembedding token nodes some edge touches."""
  seen = []
  for e in edge_recs:
    for end in (e["source"], e["target"]):
      if end.startswith(("embed:", "logit:")) and end not in seen:
        seen.append(end)
  out = []
  for nid in sorted(seen, key=lambda x: (x.startswith("logit"), x)):
    kind, _, t = nid.partition(":")
    out.append({"id": nid, "kind": kind, "token_id": int(t),
                "token": tok.token_str(int(t)) if tok is not None else t})
  return out


def edge_counts(edge_recs) -> dict:
  by_kind = {}
  for e in edge_recs:
    by_kind[e["kind"]] = by_kind.get(e["kind"], 0) + 1
  return {"edges": sum(v for k, v in by_kind.items() if k != "residual"),
          "residual_edges": by_kind.get("residual", 0),
          "edges_by_kind": by_kind}


def nodes(cfg, kept, tau, means, seed_counts=None) -> list[dict]:
  """Node records of the kept nodes (tau and mean from the pruning; how
  many stability seeds kept each node)."""
  hd = cfg.d_head
  out = []
  for s in sites_lib.node_sites(cfg):
    for i in np.nonzero(kept.get(s.name, np.zeros(0, bool)))[0]:
      out.append({
          "id": sites_lib.node_id(s.name, int(i)), "site": s.name, "layer": s.layer,
          "kind": s.kind, "index": int(i),
          "head": int(i) // hd if s.kind in ("q", "k", "v") else None,
          "tau": float(tau[s.name][i]), "mean": float(means[s.name][i]),
          "seeds_kept": (None if seed_counts is None else
                         int(seed_counts[s.name][i]))})
  return out


@functools.partial(jax.jit, static_argnames=("cfg", "names"))
def _capture_jit(params, tokens, cfg, names):
  # The model is an argument: as a constant XLA would fold it at compile time.
  return model_lib.forward(params, tokens, cfg, capture=names)[1]


def _capture(params, cfg, tokens, names):
  acts = _capture_jit(params, jnp.asarray(tokens), cfg, tuple(names))
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
  minus = []
  for rec in node_recs[:max_ablations]:
    m = {k: v.copy() for k, v in keep.items()}
    m[rec["site"]][rec["index"]] = False
    minus.append(m)
  # One batched evaluation: the circuit, then each node removed from it.
  loss = evaluator.losses([keep] + minus)
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
    rec["ablation_delta"] = (float(loss[1 + n_i] - loss[0])
                             if n_i < max_ablations else None)


def examples(task, tok, n=3):
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
  keep = res.keep
  node_recs = nodes(cfg, keep, res.tau, means, res.seed_counts)
  annotate(node_recs, params, cfg, task, tok, heldout, res.evaluator, keep)
  edge_recs, edge_stats = edges_and_counts(params, cfg, keep,
                                           io_tokens(task, tok.eot_id))
  losses = dict(res.losses)
  losses["random_init_control"] = None if control is None else control["loss"]
  return {
      "schema_version": SCHEMA_VERSION,
      "task": {"name": task.name, "description": task.description,
               "target_loss": res.losses["target"],
               "n_train": int(len(task.train.target)),
               "n_test": int(len(task.test.target)),
               "examples": examples(task, tok)},
      "model": model_info,
      "prune_config": prune_config,
      "ablation": prune_config.get("ablation", sites_lib.MEAN),
      "selected_setting": res.setting,
      "selected_index": res.selected,
      "target_reached": bool(res.reached),
      "reached": res.target_reached,
      "calibration": res.calibration,
      "sweep": res.sweep,
      "stability": res.stability,
      "nonsense_control": res.nonsense_control,
      "random_init_control": control,
      "nodes": node_recs,
      "io_nodes": io_nodes(edge_recs, tok),
      "edges": edge_recs,
      "counts": {"nodes": len(node_recs), **edge_stats,
                 "total_nodes": sites_lib.NodeIndex(sites_lib.node_sites(cfg)).n},
      "losses": losses,
      "loss_vs_k": res.loss_vs_k,
      "search_seconds": res.search_seconds,
  }

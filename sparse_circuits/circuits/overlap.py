"""How much two circuits of one model agree: node-set overlap and sizes.

Any two circuit documents (circuit.json, ours or imported from the authors'
viz_data.pt) of the same model compare node by node: a node is its site and
index ("1.mlp.post_act:37"). Only nodes of this project's node vocabulary
are compared (`sites.NODE_KINDS`); the others, such as the authors'
`final_resid` channels and the position-embedding channels csp_yolo2's
`act_in` sites carry beyond d_model, are listed apart under `not_compared`,
so that a circuit that keeps them is not penalised for nodes the other kind
of circuit cannot have. Sizes are the node counts and `counts.edges` (the
nonzero weights between kept nodes, computed the same way for both when the
imported circuit had its model; None otherwise).
"""

import math

from sparse_circuits import sites as sites_lib
from sparse_circuits.errors import CircuitError

# Model fields that must agree for node ids to mean the same neurons.
SHAPE_FIELDS = ("n_layer", "d_model", "n_head", "d_head", "d_mlp")


def _compared(n: dict) -> bool:
  return (sites_lib.kind(str(n.get("site", ""))) is not None
          and n.get("position_channel") is None)


def node_sets(doc: dict) -> tuple[dict[str, set[int]], list[str]]:
  """({site: kept indices} of the compared nodes, ids of the others)."""
  sets, others = {}, []
  for n in doc.get("nodes") or []:
    if _compared(n):
      sets.setdefault(n["site"], set()).add(int(n["index"]))
    else:
      others.append(n.get("id") or f"{n.get('site')}:{n.get('index')}")
  return sets, others


def _jaccard(shared: int, union: int) -> float | None:
  return shared / union if union else None


def _describe(doc: dict) -> dict:
  counts = doc.get("counts") or {}
  imported = doc.get("imported") or {}
  return {"name": (doc.get("task") or {}).get("name"),
          "source": "authors" if imported else "sparse_circuits",
          "path": imported.get("path") or (doc.get("model") or {}).get(
              "workdir"),
          "edges": counts.get("edges")}


def check_same_model(a: dict, b: dict) -> None:
  """Raises CircuitError if the two documents' model shapes differ."""
  ca = (a.get("model") or {}).get("config") or {}
  cb = (b.get("model") or {}).get("config") or {}
  bad = [f"{f} {ca[f]} vs {cb[f]}" for f in SHAPE_FIELDS
         if ca.get(f) is not None and cb.get(f) is not None
         and ca[f] != cb[f]]
  if bad:
    raise CircuitError("the two circuits are of different models ("
                       + ", ".join(bad) + "): their node ids do not name "
                       "the same neurons")


def overlap(a: dict, b: dict) -> dict:
  """Node-set overlap of circuit documents a and b of the same model:
  Jaccard (shared / union), shared and unique nodes by site, sizes."""
  check_same_model(a, b)
  sa, oa = node_sets(a)
  sb, ob = node_sets(b)
  by_site, shared, union = {}, 0, 0
  order = {s: i for i, s in enumerate(sites_lib.NODE_KINDS)}

  def key(site):
    layer, sub = sites_lib.split(site)
    return (layer if layer is not None else math.inf, order.get(sub, 99))

  for site in sorted(set(sa) | set(sb), key=key):
    x, y = sa.get(site, set()), sb.get(site, set())
    both = sorted(x & y)
    shared += len(both)
    union += len(x | y)
    by_site[site] = {"shared": both, "only_a": sorted(x - y),
                     "only_b": sorted(y - x),
                     "jaccard": _jaccard(len(both), len(x | y))}
  n_a, n_b = sum(map(len, sa.values())), sum(map(len, sb.values()))
  return {"a": {**_describe(a), "nodes": n_a},
          "b": {**_describe(b), "nodes": n_b},
          "shared": shared, "only_a": n_a - shared, "only_b": n_b - shared,
          "union": union, "jaccard": _jaccard(shared, union),
          "by_site": by_site, "not_compared": {"a": oa, "b": ob}}

"""The dense/sparse ratio of `--mode=compare` taken apart: where it comes
from.

A circuit's weight edges are its nodes times the pairs of kept nodes a weight
could join per node times the fraction of those pairs that hold a nonzero
weight (the effective density):

  edges = nodes x (pairs / nodes) x (edges / pairs)

so at matched loss the ratio of edges is the product of the ratios of these
three, exactly (the dense frontier is log-linear in loss for each of them,
between the same two dense models). Beside them: edges per node (the last
two together), and the edges inside blocks ("hidden": read -> q/k/v,
v -> write, read -> neuron -> write) apart from those to and from the
embedding and unembedding ("io"). A count of 0 counts as 1, as in the
geometric means of `frontier`.
"""

from sparse_circuits.experiments import frontier

# The factors of the edge ratio first (their product is "edges").
QUANTITIES = ("nodes", "pairs_per_node", "density", "edges",
              "edges_per_node", "hidden_edges", "io_edges")
IO_KINDS = ("embedding", "unembedding")


def quantities(circuit: dict) -> dict:
  """The quantities of one circuit.json (`counts`: schema 2 with pairs)."""
  c = circuit["counts"]
  by_kind = c.get("edges_by_kind", {})
  n = max(int(c["nodes"]), 1)
  e = max(int(c["edges"]), 1)
  p = max(int(c["pairs"]), 1)
  return {"nodes": n, "pairs_per_node": p / n, "density": e / p, "edges": e,
          "edges_per_node": e / n,
          "hidden_edges": max(int(by_kind.get("weight", 0)), 1),
          "io_edges": max(sum(int(by_kind.get(k, 0)) for k in IO_KINDS), 1)}


def _at_loss(losses, dense, values, loss):
  return frontier.interpolate_log([losses[i] for i in dense],
                                  [values[i] for i in dense], loss)[0]


def decompose(names, families, losses, per_task, tasks, headline_models):
  """Per sparse model, per task and for the geometric means over `tasks`:
  each quantity of the sparse circuit, the dense frontier's at the sparse
  model's loss and their ratio (dense / sparse). per_task[name][task]:
  `quantities` of that circuit. "headline": the geometric mean of each
  ratio over `headline_models` (the headline's sparse models)."""
  dense = [i for i, f in enumerate(families) if f == "dense"]
  gm = {n: {q: frontier.geomean([per_task[n][t][q] for t in tasks],
                                floor=1e-300) for q in QUANTITIES}
        for n in names}
  out = {}
  for i, (name, fam) in enumerate(zip(names, families)):
    if fam != "sparse":
      continue
    row = {"lm_loss": losses[i], "tasks": {}}
    for t in tasks + [None]:
      vals = ({n: per_task[n][t] for n in names} if t is not None else gm)
      block = {}
      for q in QUANTITIES:
        at = _at_loss(losses, dense, [vals[n][q] for n in names], losses[i])
        block[q] = {"sparse": vals[name][q], "dense_at_loss": at,
                    "ratio": at / vals[name][q]}
      if t is None:
        row["geomean"] = block
      else:
        row["tasks"][t] = block
    out[name] = row
  head = {q: frontier.geomean([out[n]["geomean"][q]["ratio"]
                               for n in headline_models], floor=1e-300)
          for q in QUANTITIES} if headline_models else None
  return {"quantities": list(QUANTITIES), "models": out, "headline": head}

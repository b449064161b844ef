"""What makes a pruned circuit credible beyond its own loss: stability across
seeds, a nonsense-task control, and the run's summary that flags a circuit
its controls do not support.

- Stability: the selected setting is pruned again with other seeds (one
  vmapped program); a circuit that is a property of the model, not of the
  seed, comes back with much the same nodes (Jaccard overlap, the nodes
  every seed keeps).
- Nonsense control: the same prompts with target and alternative swapped
  in the pairs a seeded coin picks, so that no rule of the prompt decides
  the answer; pruned the same way. Critics of the method showed that
  pruning can drive the loss of such a task down by memorising the train
  pairs; a real circuit should be much smaller than whatever reaches the
  target on the nonsense task, and its test loss should stay near chance.
- Random-init control: the same pruning on a randomly initialised model of
  the same shape (`prune.random_control`).
"""

import dataclasses
import math

import numpy as np

from sparse_circuits import layout
from sparse_circuits import reporting
from sparse_circuits.circuits import search


def nonsense_labels(data, seed):
  """(target, alternative) with the pair's two answers exchanged where a
  seeded coin says so: each pair still has one prompt per answer, so no
  bias alone helps, but no rule of the prompts predicts which."""
  n_pairs = len(data.target) // 2
  flip = np.repeat(np.random.default_rng(seed).random(n_pairs) < 0.5, 2)
  flip = np.concatenate([flip, np.zeros(len(data.target) - len(flip), bool)])
  return (np.where(flip, data.alternative, data.target),
          np.where(flip, data.target, data.alternative))


UNSTABLE_JACCARD = 0.5  # flag a circuit whose seeds overlap less on average


def jaccard(a, b):
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  union = np.sum(a | b)
  return float(np.sum(a & b) / union) if union else 1.0


def stability_and_nonsense(pruner, task, setting, circuit, seed_base,
                           progress=True):
  """Prunes the task with more seeds of `setting` and the nonsense task with
  as many seeds, all in one program; returns the two report blocks and how
  many seeds kept each node (the selected circuit counts as seed 0)."""
  pc, n = pruner.pc, pruner.n_nodes
  n_seeds = int(pc.stability_seeds)
  n_nonsense = n_seeds if pc.nonsense_control else 0
  extra = [dataclasses.replace(setting, seed=seed_base + j)
           for j in range(n_seeds - 1 + n_nonsense)]
  tr_lab = nonsense_labels(task.train, pc.seed + 1)
  te_lab = nonsense_labels(task.test, pc.seed + 2)
  real = (task.train.target, task.train.alternative)
  labels = [real] * (n_seeds - 1) + [tr_lab] * n_nonsense
  sets, sizes = [circuit], [int(circuit.sum())]
  out = {"stability": None, "nonsense": None, "counts": circuit.astype(int)}
  if not extra:
    return out
  tau, _, bad = pruner.train(task.train, extra, labels, progress)
  sr = pruner.search(tau, task.train, pc.target_loss, labels, progress)
  keep = sr.keep
  s_real = slice(0, n_seeds - 1)
  for m in keep[s_real]:
    sets.append(m)
    sizes.append(int(m.sum()))
  counts = np.sum(sets, 0)
  every = np.all(sets, 0)
  jac = [[jaccard(a, b) for b in sets] for a in sets]
  off = [jac[i][j] for i in range(len(sets)) for j in range(i + 1, len(sets))]
  out["counts"] = counts
  out["stability"] = {
      "setting": dataclasses.asdict(setting),
      "seeds": [setting.seed] + [s.seed for s in extra[s_real]],
      "nodes": sizes,
      "reached_train": [True] + [bool(x) for x in
                                 (sr.reached & ~bad)[s_real]],
      "train_loss": [None] + [float(x) for x in sr.train_loss[s_real]],
      "jaccard": jac,
      "mean_jaccard": float(np.mean(off)) if off else 1.0,
      "in_every_seed": pruner.index.ids(every),
      "n_in_every_seed": int(every.sum()),
      "n_in_any_seed": int(np.any(sets, 0).sum()),
  }
  if n_nonsense:
    s_ns = slice(n_seeds - 1, None)
    ns_keep, ns_lab = keep[s_ns], labels[s_ns]
    sc = pruner.scores(ns_keep, task.train, task.test, ns_lab,
                       [te_lab] * n_nonsense, d_train=sr.d_train[s_ns])
    reached = sr.reached[s_ns] & ~bad[s_ns]
    # The nonsense loss a circuit of the real circuit's size gets.
    at_size = np.stack([search.keep_flat(o, sizes[0], n)
                        for o in sr.order[s_ns]])
    same = pruner.scores(at_size, task.train, None, ns_lab)
    best = min(range(n_nonsense), key=lambda i: (
        not reached[i], sr.k[s_ns][i], sc.train[i]))
    out["nonsense"] = nonsense_block(
        seeds=[s.seed for s in extra[s_ns]], nodes=sr.k[s_ns],
        reached=reached, train_loss=sc.train, test_loss=sc.test,
        test_raw=sc.test_raw, at_size=same.train, best=best,
        real_nodes=sizes[0], ratio=pc.nonsense_ratio)
  return out


def nonsense_block(seeds, nodes, reached, train_loss, test_loss, test_raw,
                   at_size, best, real_nodes, ratio):
  """The nonsense control's record, with the flag: the real circuit is not
  much smaller (more than `ratio` times the size) than a circuit that
  reaches the target on the nonsense task's train pairs."""
  ns_nodes = int(nodes[best])
  flag = bool(reached[best]) and real_nodes > ratio * ns_nodes
  if flag:
    why = (f"the real circuit ({real_nodes} nodes) is not much smaller than "
           f"the {ns_nodes} nodes that fit the nonsense task's train pairs "
           f"(limit {ratio:g}x)")
  elif reached[best]:
    why = (f"{real_nodes} nodes against {ns_nodes} for the nonsense task "
           f"(within the {ratio:g}x limit)")
  else:
    why = "the nonsense task never reached the target on its train pairs"
  return {
      "seeds": list(map(int, seeds)), "nodes": [int(x) for x in nodes],
      "reached_train": [bool(x) for x in reached],
      "train_loss": [float(x) for x in train_loss],
      "test_loss": [float(x) for x in test_loss],
      "test_loss_uncalibrated": [float(x) for x in test_raw],
      "train_loss_at_circuit_size": [float(x) for x in at_size],
      "best": {"nodes": ns_nodes, "reached_train": bool(reached[best]),
               "train_loss": float(train_loss[best]),
               "test_loss": float(test_loss[best])},
      "size_ratio": (real_nodes / ns_nodes) if ns_nodes else None,
      "flag": flag, "reason": why}


# ---------------------------------------------------------------- the run

def summary_row(doc):
  """One pruned task's line of the run summary (prune_summary.json)."""
  st, ns = doc.get("stability") or {}, doc.get("nonsense_control") or {}
  rc = doc.get("random_init_control") or {}
  L = doc["losses"]
  return {"nodes": doc["counts"]["nodes"], "edges": doc["counts"]["edges"],
          "residual_edges": doc["counts"]["residual_edges"],
          "loss_full": L["full_model"], "loss_circuit": L["circuit"],
          "loss_circuit_uncalibrated": L["circuit_uncalibrated"],
          "target_reached": doc["target_reached"],
          "stability_nodes": st.get("nodes"),
          "mean_jaccard": st.get("mean_jaccard"),
          "nonsense_nodes": (ns.get("best") or {}).get("nodes"),
          "nonsense_reached": (ns.get("best") or {}).get("reached_train"),
          "nonsense_test_loss": (ns.get("best") or {}).get("test_loss"),
          "random_init_loss": rc.get("loss"),
          "flags": doc.get("flags", []),
          "seconds": doc.get("prune_seconds")}


def flags(doc):
  """Reasons a reader should distrust this circuit (empty: none found)."""
  out = []
  if not doc["target_reached"]:
    out.append("the circuit misses the target loss on the test pairs")
  ns = doc.get("nonsense_control")
  if ns and ns["flag"]:
    out.append(ns["reason"])
  st = doc.get("stability")
  if st and st["mean_jaccard"] < UNSTABLE_JACCARD:
    out.append(f"other seeds keep other nodes (mean Jaccard "
               f"{st['mean_jaccard']:.2f})")
  rc = doc.get("random_init_control")
  if rc and rc.get("reached"):
    out.append("pruning a randomly initialised model also reaches the "
               "target")
  return out


def summary_line(name, doc, path):
  c, L = doc["counts"], doc["losses"]
  st, ns = doc.get("stability"), doc.get("nonsense_control")
  parts = [f"{name}: {c['nodes']} nodes, {c['edges']} weight edges "
           f"(+{c['residual_edges']} residual) of {c['total_nodes']} nodes; "
           f"test loss full {L['full_model']:.3f}, circuit "
           f"{L['circuit']:.3f} ({L['circuit_uncalibrated']:.3f} "
           f"uncalibrated; target {L['target']}"
           f"{'' if doc['target_reached'] else ', NOT reached'}), ablated "
           f"{L['circuit_ablated']:.3f}"]
  if st:
    parts.append(f"seeds {st['nodes']} nodes, mean Jaccard "
                 f"{st['mean_jaccard']:.2f}")
  if ns:
    b = ns["best"]
    parts.append(f"nonsense {b['nodes']} nodes"
                 f"{'' if b['reached_train'] else ' (target not reached)'}, "
                 f"test loss {b['test_loss']:.3f}")
  rc = doc.get("random_init_control")
  if rc:
    parts.append(f"random-init {_fmt(rc['loss'])}")
  for f in doc.get("flags", []):
    parts.append(f"FLAG: {f}")
  return "; ".join(parts) + f"; {doc['prune_seconds']:.0f}s -> {path}"


def _fmt(x):
  return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def write_summary(workdir, plan, pc):
  """WORKDIR/circuits/prune_summary.json: every task asked for, pruned or
  skipped and why, for the run report."""
  return reporting.write_json(
      layout.Layout(workdir).prune_summary,
      {"min_accuracy": pc.min_accuracy, "target_loss": pc.target_loss,
       "tasks": plan, "environment": reporting.environment()},
      default=float)

"""Circuits: pruning a model to the nodes a task needs (paper §2.3).

- `search`: the node-mask search (one τ per node, hard step, straight-through).
- `controls`: the random-circuit and sweep controls beside each search.
- `prune`: `--mode=prune`: the pruning setup, one task's circuit, the run.
- `document`: the circuit document (`circuit.json`; docs/circuit_json.md):
  nodes, the weight edges between kept nodes, annotations.
"""

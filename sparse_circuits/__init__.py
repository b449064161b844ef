"""sparse_circuits: weight-sparse transformers with interpretable circuits.

The Python API (`import sparse_circuits as sc`):

  run = sc.load("runs/tiny")              # a trained run (runs.Run)
  logits, cache = run("x = 'a", capture=["0.attn.q"])
  circ = run.circuit("single_double_quote")
  logits, _ = run("x = 'a", interventions=circ.apply())

Imported lazily, so that `python -m sparse_circuits.main` sets up host memory
before JAX starts.
"""

__all__ = ["load", "Run", "Circuit", "Context"]


def __getattr__(name):
  if name in __all__:
    from sparse_circuits import runs  # pylint: disable=g-import-not-at-top
    return getattr(runs, name)
  raise AttributeError(f"module 'sparse_circuits' has no attribute {name!r}")

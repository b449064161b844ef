"""Base config; every other config is this one with a size argument.

  python -m sparse_circuits.main --config=configs/base.py:tiny --workdir=runs/tiny
  python -m sparse_circuits.main --config=configs/base.py:tiny_dense --workdir=runs/tiny_dense
  python -m sparse_circuits.main --config=configs/base.py:paper --mode=train --workdir=runs/paper

Sizes: micro (the tests' model, seconds), tiny (CPU, minutes), small, paper (the authors' default model); a
`_dense` suffix gives the dense baseline of the same shape (pfrac = ef**2, no
activation sparsity).
"""

from sparse_circuits import config_lib


def get_config(arg: str = "tiny"):
  return config_lib.base_config(arg)

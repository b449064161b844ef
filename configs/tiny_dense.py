"""The tiny_dense config: `python -m sparse_circuits.main --config=configs/tiny_dense.py`."""

from sparse_circuits import config_lib


def get_config():
  return config_lib.base_config("tiny_dense")

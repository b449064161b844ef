"""The paper config: `python -m sparse_circuits.main --config=configs/paper.py`."""

from sparse_circuits import config_lib


def get_config():
  return config_lib.base_config("paper")

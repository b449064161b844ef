"""A weight-sparse tiny model bridged to the tiny dense run (paper §3.3).

  python -m sparse_circuits.main --config=configs/tiny_dense.py --mode=train --workdir=runs/tiny_dense
  python -m sparse_circuits.main --config=configs/tiny_bridge.py --mode=bridge --workdir=runs/tiny_bridge
  python -m sparse_circuits.main --config=configs/tiny_bridge.py --mode=prune --workdir=runs/tiny_bridge
  python -m sparse_circuits.main --config=configs/tiny_bridge.py --mode=steer --workdir=runs/tiny_bridge
  python -m sparse_circuits.main --config=configs/tiny_bridge.py --mode=report --workdir=runs/tiny_bridge

The sparse model has the tiny shape; each bridged step runs both models and
the 2·2·n_layer hybrid paths (about six forward-and-backwards of the sparse
step), so it trains on fewer, smaller batches than `tiny` to stay within
minutes on two CPU cores. The figures it reaches are in the README.
"""

from sparse_circuits import config_lib


def get_config():
  c = config_lib.base_config("tiny")
  c.name = "tiny_bridge"
  c.bridge.dense_workdir = "runs/tiny_dense"
  c.train.num_steps = 400
  c.train.batch_size = 32
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  c.prune.tasks = ("single_double_quote",)
  c.steer.task = "single_double_quote"
  return c

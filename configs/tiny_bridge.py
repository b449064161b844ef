"""A weight-sparse tiny model bridged to the tiny dense run (paper §3.3).

  python -m sparse_circuits.main --config=configs/tiny_dense.py --mode=train --workdir=runs/tiny_dense
  python -m sparse_circuits.main --config=configs/tiny_bridge.py --mode=bridge --workdir=runs/tiny_bridge
  python -m sparse_circuits.main --config=configs/tiny_bridge.py --mode=prune --workdir=runs/tiny_bridge
  python -m sparse_circuits.main --config=configs/tiny_bridge.py --mode=steer --workdir=runs/tiny_bridge
  python -m sparse_circuits.main --config=configs/tiny_bridge.py --mode=report --workdir=runs/tiny_bridge

The sparse model has the tiny shape. A bridged step with every hybrid path
costs about five sparse LM steps (the gradient on these shapes, batch 32);
with one switch point per step in turn (`bridge.kl_paths = "cycle"`, the
same sum over a cycle of four steps) 2.7, so this trains 600 steps of 32
windows to stay within minutes on two CPU cores. The figures it reaches are
in the README.
"""

from sparse_circuits import config_lib


def get_config():
  c = config_lib.base_config("tiny")
  c.name = "tiny_bridge"
  c.bridge.dense_workdir = "runs/tiny_dense"
  c.bridge.kl_paths = "cycle"
  c.train.num_steps = 600
  c.train.batch_size = 32
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  c.prune.tasks = ("single_double_quote",)
  c.steer.task = "single_double_quote"
  return c

"""Experiments built on trained runs and their circuits.

- `compare` (`--mode=compare`) and `compare_page`: sparse against dense
  circuit sizes at matched loss (paper Fig. 3).
- `bridge` (`--mode=bridge`): bridges between a dense and a sparse model
  (paper §3.3).
- `steer` (`--mode=steer`): steering a dense model through a bridged circuit
  node (paper Fig. 9).
"""

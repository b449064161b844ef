"""Mesh and parameter sharding (method.md §7).

One code path from one CPU to a pod: a Mesh with axes (data, fsdp, tensor)
and an ordered table of (path regex -> PartitionSpec); the first match wins.
Batches are split over (data, fsdp). Any pytree whose leaf paths contain a
parameter path (optimizer moments, say) is sharded by the same table.
"""

import math
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sparse_circuits import sparsity
from sparse_circuits.errors import ConfigError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = list(mesh_cfg.shape)
  if len(shape) != 3:
    raise ConfigError(f"mesh.shape={tuple(shape)} must have 3 entries {AXES}")
  if shape.count(-1) > 1:
    raise ConfigError(f"mesh.shape={tuple(shape)}: at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ConfigError(f"mesh.shape={tuple(shape)} does not divide "
                        f"{len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ConfigError(f"mesh.shape={tuple(shape)} needs {math.prod(shape)} "
                      f"devices, have {len(devices)}")
  return Mesh(np.array(devices).reshape(shape), AXES)


def spec_for(path: str, shape, rules, mesh: Mesh) -> P:
  for pattern, entries in rules:
    if re.search(pattern, path):
      entries = tuple(entries)[:len(shape)]
      if len(entries) < len(shape):
        entries = entries + (None,) * (len(shape) - len(entries))
      for dim, (n, axis) in enumerate(zip(shape, entries)):
        if axis is None:
          continue
        size = math.prod(mesh.shape[a] for a in
                         (axis if isinstance(axis, tuple) else (axis,)))
        if n % size:
          raise ConfigError(
              f"mesh axis {axis!r} of size {size} does not divide dim {dim} "
              f"(= {n}) of {path}; change mesh.shape or mesh.rules")
      return P(*entries)
  return P()


def tree_shardings(tree, mesh: Mesh, rules):
  """NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs)."""
  def one(path, leaf):
    shape = getattr(leaf, "shape", ())
    return NamedSharding(mesh, spec_for(sparsity.path_str(path), shape, rules,
                                        mesh) if shape else P())
  return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch, mesh: Mesh):
  """Host-local batch rows -> one global array sharded over (data, fsdp)."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(local_batch, sharding)
  return jax.make_array_from_process_local_data(sharding, local_batch)

"""Multi-host runs through JAX's multi-controller runtime (method.md §7).

Every host runs the same command; `maybe_initialize` connects them when the
launcher asks for it, before anything touches a JAX backend:

  * `--distributed` on the command line or SPARSE_CIRCUITS_DISTRIBUTED=1:
    let `jax.distributed.initialize()` find the cluster (Cloud TPU VMs and
    GKE TPU pods, SLURM, Open MPI, Kubernetes), or
  * JAX_COORDINATOR_ADDRESS=host:port with JAX_NUM_PROCESSES and
    JAX_PROCESS_ID (and optionally JAX_LOCAL_DEVICE_IDS) set explicitly on
    each process, e.g. by `launch/slurm_gpu.sbatch` or a loopback test.

On CPU the processes exchange data through JAX's CPU collectives (gloo).
Each process then feeds only its own rows of every global batch
(`data.train_iterator` gives process p rows [p*B/P, (p+1)*B/P) of the global
batch, so the batch is the same whatever the number of processes); Orbax
writes one checkpoint to which every host contributes its shards (the
workdir must be a filesystem all hosts share, such as gs:// or NFS); logs,
metrics and progress bars come from process 0.
"""

import os

import jax
import numpy as np

from sparse_circuits import reporting
from sparse_circuits import sharding

_log = reporting.get(__name__)

ENV_FLAG = "SPARSE_CIRCUITS_DISTRIBUTED"
_EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def requested(flag: bool = False) -> bool:
  """Whether this process should join a multi-process job."""
  return (flag or os.environ.get(ENV_FLAG, "0").lower() not in ("", "0",
                                                                 "false")
          or "JAX_COORDINATOR_ADDRESS" in os.environ)


def maybe_initialize(flag: bool = False) -> bool:
  """Calls `jax.distributed.initialize()` if asked to; True if it did (or
  had). Must run before the first JAX computation of the process."""
  if not requested(flag):
    return False
  if jax.distributed.is_initialized():
    return True
  # The default in jax 0.10 already, but older versions had none: without
  # it, CPU processes cannot run a collective across each other.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if "JAX_NUM_PROCESSES" in os.environ:
    kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
  if "JAX_PROCESS_ID" in os.environ:
    kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
  if all(v in os.environ for v in _EXPLICIT):
    # Everything given: do not let cluster auto-detection (SLURM, say)
    # overwrite the visible devices; JAX_LOCAL_DEVICE_IDS still applies.
    kwargs["cluster_detection_method"] = "deactivate"
  missing = [v for v in _EXPLICIT[1:] if v not in os.environ]
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError) as e:
    raise RuntimeError(
        f"jax.distributed.initialize() failed: {str(e).rstrip('.')}. Run "
        "under a launcher JAX "
        "detects (Cloud TPU, GKE, SLURM, Open MPI) or set "
        f"{', '.join(_EXPLICIT)} on every process"
        + (f" (missing: {', '.join(missing)})" if missing else "")) from e
  if jax.process_index() == 0:
    _log.info(f"distributed: {jax.process_count()} processes, "
          f"{jax.device_count()} devices ({jax.local_device_count()} per "
          f"process, {jax.devices()[0].platform})")
  return True


def is_primary() -> bool:
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process has reached `name` (no-op on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def all_true(ok: bool) -> bool:
  """Whether `ok` holds on every process (a collective: all must call it)."""
  if jax.process_count() == 1:
    return bool(ok)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def primary_first(fn, *args, **kwargs):
  """fn(*args) on process 0, then on the others.

  For work whose result lands on disk (`data.prepare`): on a shared
  filesystem the others find it done and only read it; on per-host disks
  each host builds its own copy. Never two writers at once.
  """
  out = fn(*args, **kwargs) if is_primary() else None
  barrier(f"primary_first:{getattr(fn, '__name__', 'fn')}")
  return out if is_primary() else fn(*args, **kwargs)


def global_from_full(batch: np.ndarray, mesh):
  """A global batch from an array every process holds whole (eval batches):
  each process places only the rows its devices own."""
  return jax.make_array_from_process_local_data(
      sharding.batch_sharding(mesh), batch, batch.shape)

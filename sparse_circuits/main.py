"""Entry point of every mode.

  python -m sparse_circuits.main --config=configs/tiny.py [--mode=...] [--workdir=DIR]

Parses flags and dispatches to one library function per mode, each taking
(config, workdir). With no --mode, the whole pipeline runs in order.
Errors of this package's own types (`errors.UserError`) print one line and
exit 2; anything else is a bug and keeps its traceback.
"""

import importlib
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py",
                                          "ml_collections config file.")
_MODE = flags.DEFINE_string("mode", "all", "What to run; see MODES.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default",
                               "Directory for data, checkpoints and outputs.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a multi-process job (jax.distributed); also "
    "on with SPARSE_CIRCUITS_DISTRIBUTED=1 or JAX_COORDINATOR_ADDRESS set.")

# mode -> "module:function"; imported lazily so that one mode's optional
# dependencies never break another mode.
MODES = {
    "data": "sparse_circuits.data:run",
    "train": "sparse_circuits.train:run",
    "eval": "sparse_circuits.evaluate:run",
    "prune": "sparse_circuits.circuits.prune:run",
    "bridge": "sparse_circuits.experiments.bridge:run",
    "steer": "sparse_circuits.experiments.steer:run",
    "report": "sparse_circuits.viz:run",
    "import": "sparse_circuits.interop:import_run",
    "export": "sparse_circuits.interop:export_run",
    "import_circuit": "sparse_circuits.authors:import_circuit_run",
    "compile_check": "sparse_circuits.compile_check:run",
    "compare": "sparse_circuits.experiments.compare:run",
}
# What `--mode=all` runs, in order.
PIPELINE = ("data", "train", "eval", "prune", "report")


def _resolve(mode):
  module, fn = MODES[mode].split(":")
  return getattr(importlib.import_module(module), fn)


def main(argv):
  del argv
  # The package's modules are imported here, in this order, and not at the
  # top: host memory is set up before JAX starts (see hostmem).
  from sparse_circuits import hostmem  # pylint: disable=g-import-not-at-top
  hostmem.keep_freed_memory()  # before XLA's threads allocate
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from sparse_circuits import reporting  # pylint: disable=g-import-not-at-top
  reporting.to_console()
  from sparse_circuits import distributed  # pylint: disable=g-import-not-at-top
  distributed.maybe_initialize(_DISTRIBUTED.value)  # before any computation
  mode = _MODE.value
  if mode != "all" and mode not in MODES:
    raise app.UsageError(f"--mode={mode!r} unknown; choose from "
                         f"{['all', *MODES]}")
  from sparse_circuits import config_lib  # pylint: disable=g-import-not-at-top
  from sparse_circuits import errors  # pylint: disable=g-import-not-at-top
  from sparse_circuits import preemption  # pylint: disable=g-import-not-at-top
  try:
    config = _CONFIG.value
    config_lib.validate(config)
    for m in (PIPELINE if mode == "all" else (mode,)):
      _resolve(m)(config, _WORKDIR.value)
  except errors.UserError as e:  # ours and fixable: one line, no traceback
    print(f"error: {e}" + (f" (hint: {e.hint})" if e.hint else ""),
          file=sys.stderr, flush=True)
    sys.exit(2)
  except preemption.Preempted as e:  # saved; the job may be rescheduled
    if distributed.is_primary():
      print(e, flush=True)


if __name__ == "__main__":
  app.run(main)

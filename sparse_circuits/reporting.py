"""One reporter for the whole package: the `sparse_circuits` logger.

Library modules report what they did through `reporting.get(__name__)`
(never `print`), so a notebook decides what it sees (`logging.basicConfig`),
and the command line shows the messages as plain lines on process 0
(`to_console`, called by `main`).
"""

import importlib.metadata
import json
import logging
import os
import platform
import sys

ROOT = "sparse_circuits"


def get(name: str) -> logging.Logger:
  """The logger of a module: `reporting.get(__name__)`."""
  return logging.getLogger(name if name.startswith(ROOT) else
                           f"{ROOT}.{name}")


def _primary_or_warning(record: logging.LogRecord) -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return record.levelno >= logging.WARNING or jax.process_index() == 0


def to_console(level: int = logging.INFO) -> None:
  """Messages of `level` and above as plain lines on stdout: on process 0
  only, but for warnings. Safe before `jax.distributed.initialize` (the
  process index is read when a message is written)."""
  logger = logging.getLogger(ROOT)
  if any(getattr(h, "_sparse_circuits", False) for h in logger.handlers):
    return
  handler = logging.StreamHandler(sys.stdout)
  handler.setFormatter(logging.Formatter("%(message)s"))
  handler.addFilter(_primary_or_warning)
  handler._sparse_circuits = True  # pylint: disable=protected-access
  logger.addHandler(handler)
  logger.setLevel(level)
  logger.propagate = False  # absl's handler on the root would repeat it


# The packages whose versions move a run's numbers (pip does not pin them:
# docs/results.md, "Main job", saw another package set change the figures).
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "orbax-checkpoint",
            "grain", "ml-collections", "tensorstore")


def environment() -> dict:
  """What produced a result besides its config: the interpreter, the
  packages' versions (None if absent) and JAX's backend, for the result
  files (checkpoint meta, eval and prune summaries, the compare's)."""
  import jax  # pylint: disable=g-import-not-at-top
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return {"python": platform.python_version(), "packages": versions,
          "backend": jax.default_backend(),
          "devices": jax.device_count()}


def write_text(path: str, text: str) -> str:
  """Writes a file whole or not at all: into `path.tmp`, then renamed over
  `path`, so a run killed while writing leaves the previous file, never half
  of one."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def write_json(path: str, doc, **dump_kwargs) -> str:
  """A result file (circuit.json, eval_summary.json, ...) through
  `write_text`; a document json cannot encode leaves the old file as it was."""
  return write_text(path, json.dumps(doc, indent=1, **dump_kwargs))

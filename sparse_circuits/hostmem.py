"""Keep freed host memory in the process (glibc), for XLA:CPU.

XLA:CPU allocates its temporary buffers afresh on every execution. glibc
gives large blocks from mmap or from per-thread arenas and hands them back
to the kernel on free, so every train step page-faults its temporaries in
again. One arena, no mmap and no trimming keep the pages mapped between
steps: `python -m benchmarks.step --config=configs/tiny.py --noprune`
on 2 cores, twice each way in alternation, gave a 324-339 ms step against
506-507 ms with SPARSE_CIRCUITS_MALLOC=default, and 0.38-0.43M page faults
for the whole run against 2.5-2.8M (`/usr/bin/time`). The cost is that the
resident size stays at its peak.

Call `keep_freed_memory()` before JAX starts its threads (the entry points
do); set SPARSE_CIRCUITS_MALLOC=default to leave glibc as it is.
"""

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
  """True when the settings were applied (Linux with glibc)."""
  if (os.environ.get("SPARSE_CIRCUITS_MALLOC") == "default"
      or not sys.platform.startswith("linux")):
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl)
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2 ** 31 - 1)))

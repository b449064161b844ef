"""One training process per workdir: WORKDIR/LOCK names its owner.

Two training processes started on the same workdir by mistake would write
the same checkpoints and metrics. `workdir_lock` holds an exclusive
`flock` on WORKDIR/LOCK for the whole run and writes the owner's host and
pid into it, so a second process is refused with a message saying who has
it. The kernel drops the flock when its process dies, even on kill -9; the
file then still names the dead owner, and the next process on that host
takes it over with a warning. On filesystems where flock is not shared
between hosts, the file's contents are the guard: a live owner on this host
or any owner on another host (whose liveness we cannot check) refuses.
On several processes only process 0 takes the lock; the others learn
whether it succeeded, so all stop together.
"""

import contextlib
import fcntl
import json
import os
import socket
import time

import jax

from sparse_circuits import distributed
from sparse_circuits import layout
from sparse_circuits import reporting
from sparse_circuits.errors import WorkdirLockedError

_log = reporting.get(__name__)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _read_owner(fd) -> dict | None:
  os.lseek(fd, 0, os.SEEK_SET)
  raw = os.read(fd, 4096)
  try:
    owner = json.loads(raw)
    return owner if isinstance(owner, dict) else None
  except ValueError:
    return None


def _describe(owner: dict) -> str:
  return (f"process {owner.get('pid')} on host {owner.get('host')!r} "
          f"(since {owner.get('since', '?')})")


def _refuse(path: str, owner: dict | None):
  who = _describe(owner) if owner else "another process"
  raise WorkdirLockedError(
      f"{os.path.dirname(path)} is in use by {who}: one training process "
      "per workdir",
      hint=f"wait for it or use another --workdir; if that process is gone, "
      f"delete {path}")


def acquire(workdir: str) -> int:
  """Takes WORKDIR/LOCK; returns the open descriptor that holds it."""
  os.makedirs(workdir, exist_ok=True)
  path = layout.Layout(workdir).lock
  me = {"host": socket.gethostname(), "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S")}
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = _read_owner(fd)
      os.close(fd)
      _refuse(path, owner)
    try:  # the file we locked may have been released (unlinked) meanwhile
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  owner = _read_owner(fd)
  if owner:
    here = owner.get("host") == me["host"]
    if not here or (owner.get("pid") != me["pid"]
                    and _alive(int(owner.get("pid", -1)))):
      os.close(fd)
      _refuse(path, owner)
    _log.warning("%s: taking over the lock of %s, which is no longer "
                    "running", path, _describe(owner))
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, json.dumps(me).encode())
  os.fsync(fd)
  return fd


def release(workdir: str, fd: int) -> None:
  """Removes WORKDIR/LOCK (while still holding it) and closes it."""
  path = layout.Layout(workdir).lock
  try:
    os.unlink(path)
  finally:
    os.close(fd)


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds WORKDIR/LOCK for the body (process 0 only; see the module doc)."""
  fd, err = None, None
  if jax.process_index() == 0:
    try:
      fd = acquire(workdir)
    except WorkdirLockedError as e:
      err = e
  if not distributed.all_true(err is None):
    if fd is not None:
      release(workdir, fd)
    raise err or WorkdirLockedError(
        f"process 0 could not lock {workdir}: another training process "
        "holds it")
  try:
    yield
  finally:
    if fd is not None:
      release(workdir, fd)

"""Stopping training cleanly on SIGTERM or SIGINT: finish the step, save.

Clusters preempt jobs (TPU pods under maintenance, spot GPUs, SLURM's time
limit) with SIGTERM and a grace period; Ctrl-C sends SIGINT. Without a
handler either loses every step since the last periodic checkpoint.

One process: `StopRequest` turns the first SIGTERM/SIGINT into a flag that
the training loop reads after each step; it then saves that step and raises
`Preempted`, which the command line reports as a success (exit 0). A second
signal acts as it would without us (Ctrl-C twice stops at once).

Several processes must save the same step together, or the checkpoint is
never finalized. JAX's preemption service (on by default under
`jax.distributed`) already catches SIGTERM on any host and agrees with the
others on a step at which all of them are told to save; Orbax's
`CheckpointManager.reached_preemption(step)` asks it. There we install no
handler of our own (a Python handler would replace JAX's), so SIGINT keeps
its default effect.
"""

import signal
import threading

import jax


class Preempted(Exception):
  """Training stopped on request after saving `step`; the CLI exits 0."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


class StopRequest:
  """A context manager that catches SIGTERM/SIGINT for the training loop."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name = None  # e.g. "SIGTERM" once one arrived
    self._previous = {}

  def __enter__(self):
    if (jax.process_count() == 1
        and threading.current_thread() is threading.main_thread()):
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    self._restore()

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name
    self._restore()  # the next signal takes its usual course

  def _restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    self._previous = {}

  def requested(self, mngr, step: int) -> bool:
    """Whether to save `step` and stop. Every process calls it every step
    (JAX's sync-point protocol needs that)."""
    if jax.process_count() > 1:
      if mngr.reached_preemption(step):
        self.signal_name = self.signal_name or "a preemption notice"
        return True
      return False
    return self.signal_name is not None

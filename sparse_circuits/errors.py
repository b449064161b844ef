"""Errors the user can fix: the command line prints them as one line.

`main` catches `UserError` and prints `error: <message>` (and the hint, if
any) with exit status 2; any other exception is a bug and keeps its
traceback. Each class also derives from the builtin type the code raised
before (ValueError, RuntimeError, ImportError), so callers that catch those
keep working.
"""


class UserError(Exception):
  """A problem with the input, the config or the workdir, not the code.

  `hint` (optional) says what to do about it.
  """

  def __init__(self, message: str, hint: str = ""):
    super().__init__(message)
    self.hint = hint


class ConfigError(UserError, ValueError):
  """A config field with a value we cannot run (the message names it)."""


class DataError(UserError, ValueError):
  """A corpus or token split we cannot train on."""


class CheckpointError(UserError, RuntimeError):
  """No checkpoint, none that restores, or one that does not fit the config."""


class InteropError(UserError, ValueError):
  """A file in the authors' format that we cannot convert faithfully."""


class CircuitError(UserError, ValueError):
  """Circuit documents that cannot be compared (of different models)."""


class TaskFileError(UserError, ValueError):
  """A user task file (JSONL) with a bad row."""


class RunFileError(UserError, FileNotFoundError):
  """A workdir, or a file an earlier mode writes into it, is missing or
  unreadable (the message names it and the mode that writes it)."""


class WorkdirLockedError(UserError, RuntimeError):
  """Another training process holds the workdir."""


class MissingDependencyError(UserError, ImportError):
  """An optional package a mode needs is not installed."""

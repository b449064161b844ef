"""Orbax checkpoints of a run: WORKDIR/checkpoints/<step>/{params,opt_state,meta,data}.

`params` and `opt_state` are separate items so that the prune and eval
programs restore parameters only and never build an optimizer. `meta` holds
the step and the run's config (JSON); `data` the grain iterator's position.
A bridged run (`--mode=bridge`) adds its bridges as an item of their own
(`EXTRA_ITEMS`), beside the model's `params`.

Restoring falls back: a node that died mid-write, a disk that filled up or a
copy cut short leaves a step whose files are damaged, and Orbax keeps the
older steps for exactly this. Every restore here walks back from the newest
step to the newest one that restores completely, logs one warning line per
step it skipped (and why), and moves each skipped step aside to
`<step>.damaged` (not deleted, so it can be inspected; Orbax ignores the
name). A step is moved aside only once an older one has restored, so a
systematic failure (a wrong config, an unreadable directory) moves nothing
and stops with one error listing every step's reason. A checkpoint whose
shapes do not match the config is a config error, never "damage".
"""

import gc
import json
import logging
import os
import sys
from typing import Any, Callable

import jax
import ml_collections
import orbax.checkpoint as ocp

from sparse_circuits import data
from sparse_circuits import distributed
from sparse_circuits import layout
from sparse_circuits import reporting
from sparse_circuits.errors import CheckpointError

_log = reporting.get(__name__)

DAMAGED_SUFFIX = ".damaged"
# Trained state that is not the model's parameters, each its own item.
EXTRA_ITEMS = ("bridges",)


def ckpt_dir(workdir: str) -> str:
  return layout.Layout(workdir).checkpoints


def manager(workdir: str, keep: int = 2, async_save: bool = True,
            create: bool = True):
  import grain  # pylint: disable=g-import-not-at-top
  return ocp.CheckpointManager(
      ckpt_dir(workdir),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=create,
          enable_async_checkpointing=async_save),
      item_handlers={"params": ocp.StandardCheckpointHandler(),
                     "opt_state": ocp.StandardCheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler(),
                     "data": grain.checkpoint.CheckpointHandler(),
                     **{k: ocp.StandardCheckpointHandler()
                        for k in EXTRA_ITEMS}})


def _no_checkpoint(workdir: str) -> CheckpointError:
  return CheckpointError(
      f"no checkpoint in {ckpt_dir(workdir)}",
      hint="train first (--mode=train) or import one (--mode=import)")


def _reader(workdir: str):
  """A manager that only reads (an absent directory is not created)."""
  if not os.path.isdir(ckpt_dir(workdir)):
    raise _no_checkpoint(workdir)
  return manager(workdir, async_save=False, create=False)


def save(mngr, step: int, params, opt_state, config, data_iter=None,
         extras=None):
  """`extras`: {name in EXTRA_ITEMS: tree} saved beside the params."""
  items = dict(
      params=ocp.args.StandardSave(params),
      opt_state=ocp.args.StandardSave(opt_state),
      meta=ocp.args.JsonSave({"step": int(step),
                              "config": json.loads(config.to_json()),
                              "environment": reporting.environment()}),
      **{k: ocp.args.StandardSave(v) for k, v in (extras or {}).items()})
  if data_iter is not None:
    items["data"] = data.checkpoint_args(data_iter)
  mngr.save(step, args=ocp.args.Composite(**items))


def all_steps(workdir: str) -> list[int]:
  """The finalized checkpoints' steps, oldest first (Orbax writes into a
  temporary name and renames when done, so a crash mid-save leaves none)."""
  if not os.path.isdir(ckpt_dir(workdir)):
    return []
  with manager(workdir, async_save=False, create=False) as mngr:
    return sorted(mngr.all_steps())


def latest_step(workdir: str):
  """The newest finalized checkpoint's step, or None."""
  steps = all_steps(workdir)
  return steps[-1] if steps else None


def _why(e: BaseException) -> str:
  """The innermost cause's first line: Orbax wraps TensorStore's message
  (e.g. "OUT_OF_RANGE: ... Requested byte range ...") in a long spec dump."""
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  line = (str(e).strip().splitlines() or [""])[0]
  line = f"{type(e).__name__}: {line}" if line else type(e).__name__
  return line if len(line) <= 240 else line[:237] + "..."


def _quiet_abandoned_reads() -> None:
  """Keeps the fallout of a failed restore off the user's terminal.

  Orbax runs a restore's reads as asyncio tasks on a throwaway event loop
  and closes it as soon as one read fails. The other reads finish later in
  TensorStore's threads, find the loop closed, and every one of them prints
  a traceback ("Event loop is closed", then the read's own error when its
  coroutine is collected, often at exit: "Python is likely shutting down"),
  and every read that failed too is logged by asyncio as "Task exception was
  never retrieved" when its task is collected. A failure itself is reported
  (one line); this drops exactly those reports.

  It is installed before the first restore is tried, not after one fails:
  the abandoned reads may complete while the failure is still propagating
  (seen on a slow 2-core machine), so a hook set up afterwards is too late.
  """
  global _QUIET
  if _QUIET:
    return
  _QUIET = True
  previous = sys.unraisablehook

  def hook(u):
    code = getattr(u.object, "cr_code", None)
    if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
      return  # an abandoned read's coroutine, collected
    if (isinstance(u.exc_value, RuntimeError) and
        str(u.exc_value) == "Event loop is closed"):
      return  # an abandoned read completing into the closed loop
    previous(u)

  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_drop_abandoned_read_errors)


def _drop_abandoned_read_errors(record: logging.LogRecord) -> bool:
  """A logging filter for asyncio's logger: False (drop) for the report of an
  abandoned restore read whose exception nobody retrieved ("Task exception
  was never retrieved" once its task is collected). Only errors raised inside
  Orbax's read/restore functions are dropped; a failed save still shows."""
  exc = record.exc_info[1] if record.exc_info else None
  seen = 0
  while exc is not None and seen < 8:  # the error and what it was raised from
    tb = exc.__traceback__
    while tb is not None:
      code = tb.tb_frame.f_code
      if (f"{os.sep}orbax{os.sep}" in code.co_filename and
          ("read" in code.co_name or "restore" in code.co_name)):
        return False
      tb = tb.tb_next
    exc, seen = exc.__cause__ or exc.__context__, seen + 1
  return True


_QUIET = False


def _move_aside(directory, step: int) -> str:
  base = os.path.join(str(directory), str(step))
  dest, n = base + DAMAGED_SUFFIX, 1
  while os.path.exists(dest):
    dest, n = f"{base}{DAMAGED_SUFFIX}.{n}", n + 1
  os.rename(base, dest)
  return dest


def restore_newest(mngr, restore_step: Callable[[int], Any],
                   step: int | None = None) -> tuple[Any, int | None]:
  """(restore_step(s), s) for the newest step s that restores completely.

  Steps that fail are skipped with one warning line each and, once an older
  step has restored, moved aside to `<step>.damaged`. `restore_step` may
  raise CheckpointError to refuse a step for a reason that is not damage (a
  shape that does not fit the config): that stops the walk at once. With
  `step` given, only that step is tried. No step at all: (None, None). No
  step that restores: CheckpointError naming every step and its reason.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  if step is not None and step not in steps:
    raise CheckpointError(
        f"no checkpoint at step {step} in {mngr.directory}",
        hint=f"its steps: {sorted(steps)}" if steps else "it has none")
  steps = [step] if step is not None else steps
  failed = []
  _quiet_abandoned_reads()
  for s in steps:
    try:
      out, why = restore_step(s), None
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      out, why = None, _why(e)  # Orbax/TensorStore raise many types
    if why is not None:
      gc.collect()  # the abandoned reads' coroutines: now, not at exit
    # A step counts as readable only if every host read its shards of it.
    if not distributed.all_true(why is None):
      failed.append((s, why or "another process could not read it"))
      continue
    for bad, reason in failed if jax.process_index() == 0 else ():
      dest = _move_aside(mngr.directory, bad)
      _log.warning("checkpoint step %d in %s is damaged (%s): restored "
                      "step %d instead and moved the damaged one to %s",
                      bad, mngr.directory, reason, s, dest)
    if failed:
      distributed.barrier("checkpoints.move_aside")
      mngr.reload()
    return out, s
  if failed:
    raise CheckpointError(
        f"no readable checkpoint in {mngr.directory}: " + "; ".join(
            f"step {s}: {why}" for s, why in failed),
        hint="nothing was moved or deleted; remove the checkpoints directory "
        "to start over")
  return None, None


def restore_latest(mngr, abstract_params, abstract_opt_state=None,
                   data_iter=None, step=None, abstract_extras=None):
  """((params, opt_state or None, meta), step) of the newest step that
  restores completely, restored onto the abstract shardings; (None, None)
  when there is no checkpoint. With `abstract_extras` ({name: tree}),
  meta["extras"] holds those items."""

  def restore_step(s):
    # The parameters' shapes say whether the checkpoint fits the config (the
    # optimizer state follows them; Orbax's metadata of it loses the optax
    # state classes, so its paths would not compare).
    _check_shapes(_item_metadata(mngr, s).get("params"), abstract_params,
                  mngr.directory, s)
    items = dict(params=ocp.args.StandardRestore(abstract_params),
                 meta=ocp.args.JsonRestore(),
                 **{k: ocp.args.StandardRestore(v)
                    for k, v in (abstract_extras or {}).items()})
    if abstract_opt_state is not None:
      items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
    if data_iter is not None:
      items["data"] = data.checkpoint_args(data_iter, restore=True)
    out = mngr.restore(s, args=ocp.args.Composite(**items))
    meta = dict(out["meta"])
    if abstract_extras:
      meta["extras"] = {k: out[k] for k in abstract_extras}
    return out["params"], out.get("opt_state"), meta

  return restore_newest(mngr, restore_step, step)


def _item_metadata(mngr, step) -> dict:
  """{item: metadata tree} from Orbax; raises (damage) if unreadable."""
  tree = mngr.item_metadata(step)
  return {k: tree[k] for k in tree.keys()} if tree is not None else {}


def load_config(workdir: str, step=None) -> ml_collections.ConfigDict:
  """The config a run was trained with (from its newest readable checkpoint,
  or from `step`)."""
  with _reader(workdir) as mngr:
    meta, _ = restore_newest(
        mngr, lambda s: mngr.restore(s, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"], step)
  if meta is None:
    raise _no_checkpoint(workdir)
  return ml_collections.ConfigDict(meta["config"])


def restore_params(workdir: str, abstract_params, step=None):
  """Parameters only (no optimizer state) and the step.

  `abstract_params` (ShapeDtypeStructs, optionally with shardings) is what
  the caller's config expects; a checkpoint of another shape is refused with
  a message naming the mismatching parameter.
  """
  with _reader(workdir) as mngr:

    def restore_step(s):
      _check_shapes(_item_metadata(mngr, s).get("params"), abstract_params,
                    mngr.directory, s)
      return mngr.restore(s, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params)))["params"]

    params, step = restore_newest(mngr, restore_step, step)
  if step is None:
    raise _no_checkpoint(workdir)
  return params, step


def restore_extra(workdir: str, name: str, abstract, step=None):
  """One extra item (e.g. a bridged run's bridges) of the newest readable
  step, or of `step`."""
  with _reader(workdir) as mngr:

    def restore_step(s):
      stored = _item_metadata(mngr, s).get(name)
      if stored is None:
        raise CheckpointError(
            f"checkpoint {s} in {mngr.directory} holds no {name!r} item",
            hint=f"is it a run of the mode that writes {name}?")
      _check_shapes(stored, abstract, mngr.directory, s)
      return mngr.restore(s, args=ocp.args.Composite(
          **{name: ocp.args.StandardRestore(abstract)}))[name]

    out, step = restore_newest(mngr, restore_step, step)
  if step is None:
    raise _no_checkpoint(workdir)
  return out


def _check_shapes(stored, expected, directory, step):
  """Refuses a checkpoint whose tree does not fit the config (not damage)."""
  if stored is None:
    return  # no metadata to compare: the restore itself will tell
  flat_s = {jax.tree_util.keystr(p): getattr(v, "shape", None) for p, v in
            jax.tree_util.tree_flatten_with_path(stored)[0]}
  flat_e = {jax.tree_util.keystr(p): v.shape for p, v in
            jax.tree_util.tree_flatten_with_path(expected)[0]}
  for k in sorted(set(flat_s) | set(flat_e)):
    if k not in flat_s or k not in flat_e or (
        flat_s[k] is not None and tuple(flat_s[k]) != tuple(flat_e[k])):
      raise CheckpointError(
          f"checkpoint {step} in {directory} does not match the config: "
          f"parameter {k} is {flat_s.get(k, 'missing')} in the checkpoint, "
          f"{flat_e.get(k, 'absent')} in the model",
          hint="pass the config the run was trained with, or another "
          "--workdir")

"""Orbax checkpoints of a run: WORKDIR/checkpoints/<step>/{params,opt_state,meta,data}.

`params` and `opt_state` are separate items so that the prune and eval
programs restore parameters only and never build an optimizer. `meta` holds
the step and the run's config (JSON); `data` the grain iterator's position.
"""

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  pass


def ckpt_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, keep: int = 2, async_save: bool = True):
  import grain  # pylint: disable=g-import-not-at-top
  return ocp.CheckpointManager(
      ckpt_dir(workdir),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True,
          enable_async_checkpointing=async_save),
      item_handlers={"params": ocp.StandardCheckpointHandler(),
                     "opt_state": ocp.StandardCheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler(),
                     "data": grain.checkpoint.CheckpointHandler()})


def save(mngr, step: int, params, opt_state, config, data_iter=None):
  import grain  # pylint: disable=g-import-not-at-top
  items = dict(
      params=ocp.args.StandardSave(params),
      opt_state=ocp.args.StandardSave(opt_state),
      meta=ocp.args.JsonSave({"step": int(step),
                              "config": json.loads(config.to_json())}))
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  mngr.save(step, args=ocp.args.Composite(**items))


def latest_step(workdir: str):
  """The newest finalized checkpoint's step (Orbax writes into a temporary
  name and renames when done, so a crash mid-save leaves no step dir)."""
  d = ckpt_dir(workdir)
  if not os.path.isdir(d):
    return None
  steps = [int(n) for n in os.listdir(d)
           if n.isdigit() and os.path.isdir(os.path.join(d, n))]
  return max(steps) if steps else None


def restore(mngr, step, abstract_params, abstract_opt_state=None,
            data_iter=None):
  """(params, opt_state or None, meta) restored onto the abstract shardings."""
  import grain  # pylint: disable=g-import-not-at-top
  items = dict(params=ocp.args.StandardRestore(abstract_params),
               meta=ocp.args.JsonRestore())
  if abstract_opt_state is not None:
    items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    out = mngr.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # orbax raises many types; name the checkpoint.
    raise CheckpointError(
        f"cannot restore checkpoint step {step} from {mngr.directory}: "
        f"{type(e).__name__}: {e}") from e
  return out["params"], out.get("opt_state"), out["meta"]


def load_config(workdir: str, step=None) -> ml_collections.ConfigDict:
  """The config a run was trained with (from its checkpoint)."""
  step = latest_step(workdir) if step is None else step
  if step is None:
    raise CheckpointError(f"no checkpoint in {ckpt_dir(workdir)}; train "
                          "first (--mode=train) or import one")
  path = os.path.join(ckpt_dir(workdir), str(step), "meta", "metadata")
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"checkpoint {step} in {ckpt_dir(workdir)} has no "
                          f"readable config ({e})") from e
  return ml_collections.ConfigDict(meta["config"])


def restore_params(workdir: str, abstract_params, step=None):
  """Parameters only (no optimizer state) and the step.

  `abstract_params` (ShapeDtypeStructs, optionally with shardings) is what
  the caller's config expects; a checkpoint of another shape is refused with
  a message naming the mismatching parameter.
  """
  step = latest_step(workdir) if step is None else step
  if step is None:
    raise CheckpointError(f"no checkpoint in {ckpt_dir(workdir)}")
  with manager(workdir, async_save=False) as mngr:
    meta_tree = mngr.item_metadata(step)
    stored = meta_tree["params"] if meta_tree is not None else None
    if stored is not None:
      _check_shapes(stored, abstract_params, workdir, step)
    params, _, _ = restore(mngr, step, abstract_params)
  return params, step


def _check_shapes(stored, expected, workdir, step):
  flat_s = {jax.tree_util.keystr(p): getattr(v, "shape", None) for p, v in
            jax.tree_util.tree_flatten_with_path(stored)[0]}
  flat_e = {jax.tree_util.keystr(p): v.shape for p, v in
            jax.tree_util.tree_flatten_with_path(expected)[0]}
  for k in sorted(set(flat_s) | set(flat_e)):
    if k not in flat_s or k not in flat_e or (
        flat_s[k] is not None and tuple(flat_s[k]) != tuple(flat_e[k])):
      raise CheckpointError(
          f"checkpoint {step} in {ckpt_dir(workdir)} does not match the "
          f"config: parameter {k} is {flat_s.get(k, 'missing')} in the "
          f"checkpoint, {flat_e.get(k, 'absent')} in the model")

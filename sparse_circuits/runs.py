"""A run and its context: the one door into a trained model.

`context(config)` holds everything static about a run except the optimizer:
the model config, the sparsity plan, the mesh, and the abstract parameters
with their shardings. Training adds the optimizer on top (`train.make_setup`);
eval, prune, report and export use the context alone, so they never build an
optimizer.

`load(workdir)` reads the config a run was trained with from its checkpoint,
lays the caller's analysis settings over it (`overlay_config`, the one place
that does this), restores the parameters and finds the tokenizer. The `Run`
it returns is also the Python API (`import sparse_circuits as sc;
run = sc.load("runs/tiny")`):

  ids = run.tokenize("x = 'a")
  logits, cache = run(ids, capture=["0.attn.q"])        # [B, L, V], {site: act}
  circ = run.circuit("single_double_quote")
  logits, _ = run(ids, interventions=circ.apply())      # the circuit alone
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sparse_circuits import checkpoints
from sparse_circuits import config_lib
from sparse_circuits import data
from sparse_circuits import errors
from sparse_circuits import layout
from sparse_circuits import model as model_lib
from sparse_circuits import sharding
from sparse_circuits import sites as sites_lib
from sparse_circuits import sparsity
from sparse_circuits import tokenizer as tokenizer_lib
from sparse_circuits.tasks import binary as tasks_lib

# Config sections an analysis (eval, prune, the API) may set over the run's
# stored config; everything else (model, data, sparsity) is the run's own.
OVERLAY_SECTIONS = ("tasks", "prune", "eval")


@functools.cache
def _DEFAULTS() -> ml_collections.ConfigDict:  # pylint: disable=invalid-name
  """This version's default config: what an older run's stored config is
  upgraded with."""
  return config_lib.base_config("tiny")


@dataclasses.dataclass(frozen=True)
class Context:
  """Everything static about a run but the optimizer."""
  config: Any
  cfg: model_lib.ModelConfig
  plan: sparsity.Plan | None
  mesh: Any
  abstract_params: Any  # ShapeDtypeStructs carrying their shardings
  param_shardings: Any


def model_config(config) -> model_lib.ModelConfig:
  return model_lib.ModelConfig.from_config(config.model)


def sparsity_plan(config, abstract) -> sparsity.Plan | None:
  s = config.sparsity
  if not s.enabled:
    return None
  return sparsity.make_plan(
      abstract, sparsity.Schedule(config.train.num_steps, s.pfrac,
                                  s.expansion_factor, s.anneal_start,
                                  s.anneal_end), s.min_per_neuron)


def with_shardings(tree, shardings):
  return jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
      tree, shardings)


def context(config, devices=None) -> Context:
  cfg = model_config(config)
  abstract = model_lib.abstract_params(cfg)
  mesh = sharding.make_mesh(config.mesh, devices)
  p_sh = sharding.tree_shardings(abstract, mesh,
                                 [tuple(r) for r in config.mesh.rules])
  return Context(config, cfg, sparsity_plan(config, abstract), mesh,
                 with_shardings(abstract, p_sh), p_sh)


def lm_eval_step(ctx: Context):
  """Jitted (params, global batch [B, L+1]) -> mean next-token loss."""
  return jax.jit(
      lambda params, batch: model_lib.lm_loss(params, batch, ctx.cfg),
      in_shardings=(ctx.param_shardings, sharding.batch_sharding(ctx.mesh)),
      out_shardings=sharding.replicated(ctx.mesh))


# ------------------------------------------------------------ stored config


def _update(dst: ml_collections.ConfigDict, src: Mapping[str, Any], where,
            known=None):
  """dst <- src, field by field. A field neither the run's stored config nor
  this version's defaults (`known`) has is a typo: ConfigError naming it."""
  for k, v in src.items():
    ref = known.get(k) if known is not None else None
    if k not in dst and (known is None or k not in known):
      close = difflib.get_close_matches(
          k, list(dst) + list(known or ()), n=1)
      raise errors.ConfigError(
          f"overlay: {where}.{k} is not a config field"
          + (f" (did you mean {where}.{close[0]}?)" if close else ""))
    if isinstance(v, Mapping) and isinstance(dst.get(k),
                                             ml_collections.ConfigDict):
      _update(dst[k], v, f"{where}.{k}",
              ref if isinstance(ref, ml_collections.ConfigDict) else None)
    else:
      dst[k] = v


def _fill(dst: ml_collections.ConfigDict, defaults) -> None:
  for k, v in defaults.items():
    if k not in dst:
      dst[k] = (ml_collections.ConfigDict(v.to_dict())
                if isinstance(v, ml_collections.ConfigDict) else v)
    elif isinstance(v, ml_collections.ConfigDict) and isinstance(
        dst[k], ml_collections.ConfigDict):
      _fill(dst[k], v)


def upgrade_config(stored) -> ml_collections.ConfigDict:
  """A stored config with every field this version added since, at its
  default (which is the behaviour of the version that stored it: a field is
  only ever added with the old behaviour as its default). The one place old
  configs are upgraded; code that reads a run's config reads every field
  directly."""
  config = ml_collections.ConfigDict(
      stored.to_dict() if hasattr(stored, "to_dict") else dict(stored))
  with config.unlocked():
    _fill(config, _DEFAULTS())
  return config


def overlay_config(stored, overlay=None) -> ml_collections.ConfigDict:
  """The run's stored config, upgraded, with the caller's analysis settings
  on top.

  `overlay` is either a whole config (the command line's: its `tasks`,
  `prune` and `eval` sections replace the stored ones, and its
  `train.eval_batches` and a non-empty `data.tokenizer_dir` are taken), or a
  mapping of just the fields to change, e.g. `{"tasks": {"n_test": 64}}`
  (from a notebook; only the OVERLAY_SECTIONS, plus `train.eval_batches`).
  """
  merged = upgrade_config(stored)
  if overlay is None:
    return merged
  with merged.unlocked():
    if isinstance(overlay, ml_collections.ConfigDict):
      for sec in OVERLAY_SECTIONS:
        if sec in overlay:
          merged[sec] = ml_collections.ConfigDict(overlay[sec].to_dict())
      if "train" in overlay and "eval_batches" in overlay.train:
        merged.train.eval_batches = overlay.train.eval_batches
      if "data" in overlay and overlay.data.tokenizer_dir:
        merged.data.tokenizer_dir = overlay.data.tokenizer_dir
      return merged
    for sec, fields in overlay.items():
      if sec == "train" and set(fields) <= {"eval_batches"}:
        pass
      elif sec not in OVERLAY_SECTIONS:
        raise errors.ConfigError(
            f"overlay section {sec!r} cannot change a trained run; "
            f"allowed: {OVERLAY_SECTIONS} and train.eval_batches")
      if sec not in merged:
        merged[sec] = ml_collections.ConfigDict()
      _update(merged[sec], fields, sec,
              _DEFAULTS().get(sec) or ml_collections.ConfigDict())
  return merged


def tokenizer_dir(config, workdir: str) -> str:
  """Where a run's tokenizer lives: the config's, else the one its data was
  built with (the data manifest), else WORKDIR/data/tokenizer."""
  if config.data.get("tokenizer_dir", ""):
    return config.data.tokenizer_dir
  where = layout.Layout(workdir)
  if os.path.exists(where.manifest):
    with open(where.manifest) as f:
      return data.manifest_tokenizer_dir(where.data, json.load(f))
  return where.tokenizer


# ------------------------------------------------------------- the API


_forward = jax.jit(model_lib.forward,
                   static_argnames=("cfg", "capture", "last_only"))


class Run:
  """A trained run: its config, parameters and tokenizer (see the module
  docstring). Build it with `load(workdir)`."""

  def __init__(self, workdir: str, config, ctx: Context, params, step: int):
    self.workdir, self.config, self.ctx = workdir, config, ctx
    self.params, self.step = params, step
    self._tokenizer = None

  @property
  def tokenizer(self):
    """The run's tokenizer, read on first use (export needs none)."""
    if self._tokenizer is None:
      tok_dir = tokenizer_dir(self.config, self.workdir)
      try:
        self._tokenizer = tokenizer_lib.load(tok_dir)
      except (OSError, ValueError) as e:
        raise checkpoints.CheckpointError(
            f"the tokenizer of {self.workdir} ({tok_dir}) cannot be read: "
            f"{e}") from e
    return self._tokenizer

  @property
  def cfg(self) -> model_lib.ModelConfig:
    return self.ctx.cfg

  def site_names(self) -> list[str]:
    return self.cfg.site_names()

  def __repr__(self):
    c = self.cfg
    return (f"Run({self.workdir!r}, step={self.step}, {c.n_layer} layers, "
            f"d_model {c.d_model}, afrac {c.afrac or 'off'})")

  # ---- text

  def tokenize(self, text: str) -> np.ndarray:
    """int32 [L] token ids (no end-of-text is added)."""
    return np.asarray(self.tokenizer.encode(text), np.int32)

  def decode(self, ids) -> str:
    return self.tokenizer.decode(np.asarray(ids).reshape(-1).tolist())

  # ---- the model

  def __call__(self, tokens, capture: Sequence[str] = (),
               interventions: Mapping[str, Mapping[str, Any]] | None = None):
    """(logits [B, L, V], {site: activation}) for a str, ids [L] or [B, L].

    `capture` names activation sites (`run.site_names()`); `interventions`
    maps a site to {"mask", "mean"} (x <- m*x + (1-m)*mean), e.g. a
    circuit's `apply()`. Runs jitted; a new shape or capture set compiles."""
    if isinstance(tokens, str):
      tokens = self.tokenize(tokens)
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim == 1:
      tokens = tokens[None]
    if tokens.shape[1] > self.cfg.block_size:
      raise ValueError(f"{tokens.shape[1]} tokens exceed the context of "
                       f"{self.cfg.block_size}")
    if tokens.size and (tokens.min() < 0 or
                        tokens.max() >= self.cfg.vocab_size):
      raise ValueError(  # a gather would clamp them silently
          f"token ids must be in [0, {self.cfg.vocab_size}); got "
          f"{int(tokens.min())}..{int(tokens.max())}")
    iv = None if interventions is None else jax.tree.map(jnp.asarray,
                                                         dict(interventions))
    if iv:
      self._check_interventions(tokens, iv)
    return _forward(self.params, jnp.asarray(tokens), self.cfg, iv,
                    tuple(capture))

  def _check_interventions(self, tokens, iv):
    """Each mask and mean must broadcast to its site's activation."""
    _, shapes = jax.eval_shape(
        lambda t: _forward(self.params, t, self.cfg, None, tuple(iv)),
        jax.ShapeDtypeStruct(tokens.shape, jnp.int32))
    for site, spec in iv.items():
      want = shapes[site].shape
      for key in ("mask", "mean"):
        if key not in spec:
          raise ValueError(f"interventions[{site!r}] needs 'mask' and "
                           f"'mean'; got {sorted(spec)}")
        got = spec[key].shape
        try:
          fits = np.broadcast_shapes(got, want) == tuple(want)
        except ValueError:
          fits = False
        if not fits:
          raise ValueError(
              f"interventions[{site!r}][{key!r}] has shape {got}; the site's "
              f"activation is {tuple(want)}: give a scalar, [{want[-1]}] "
              "(one per node) or a shape that broadcasts to it")

  # ---- tasks and circuits

  def tasks(self, names: Sequence[str] | None = None) -> dict:
    """The task suite built with this run's tokenizer (config.tasks); a task
    whose candidates the tokenizer cannot compare is left out, with a
    warning."""
    return tasks_lib.build_suite(self.config, self.tokenizer, names=names)[0]

  def task(self, name: str):
    """One task; CandidateError says why if the tokenizer cannot build it."""
    return tasks_lib.build_all(self.config, self.tokenizer, names=[name])[name]

  def evaluate(self, task, interventions=None, split: str = "test",
               calibration=None) -> dict:
    """{loss, accuracy, n} of a task (a Task or its name) on one split;
    `calibration` = {"scale", "shift"} scores a*d + b*sign as pruning does."""
    if isinstance(task, str):
      task = self.task(task)
    return tasks_lib.evaluate_task(self.params, self.cfg,
                                   getattr(task, split),
                                   interventions=interventions,
                                   calibration=calibration)

  def circuit(self, task_name: str) -> "Circuit":
    """WORKDIR/circuits/<task>/circuit.json with the means it was pruned
    against."""
    where = layout.Layout(self.workdir)
    path = where.circuit(task_name)
    if not os.path.exists(path):
      raise errors.RunFileError(f"no circuit for {task_name!r}: {path} is "
                                "missing (run --mode=prune)")
    try:
      with open(path) as f:
        doc = json.load(f)
    except json.JSONDecodeError as err:
      raise errors.RunFileError(f"{path} is not valid JSON: {err}") from err
    step = doc.get("model", {}).get("step", self.step)
    means_path = where.means(step)
    if not os.path.exists(means_path):
      raise errors.RunFileError(f"{path} was pruned against {means_path}, "
                                "which is missing")
    return Circuit(doc, dict(np.load(means_path)), self)


class Circuit:
  """A pruned circuit: its kept nodes and the values everything else is
  ablated to (`means`: the mean activations, or 0 under the circuit's
  "ablation": "zero"). `doc` is the circuit.json document (schema in the
  README)."""

  def __init__(self, doc: dict, means: Mapping[str, np.ndarray], run: Run):
    self.doc, self.run = doc, run
    self.means = sites_lib.ablation_values(
        means, doc.get("ablation", sites_lib.MEAN))
    self.name = doc["task"]["name"]
    self.keep = sites_lib.node_masks(
        doc["nodes"], {s: len(m) for s, m in means.items()})

  @property
  def losses(self) -> dict:
    return self.doc["losses"]

  @property
  def counts(self) -> dict:
    return self.doc["counts"]

  def __repr__(self):
    return (f"Circuit({self.name!r}, {self.counts['nodes']} nodes, "
            f"{self.counts['edges']} edges)")

  def apply(self) -> dict:
    """Interventions that keep the circuit and ablate every other node."""
    return {s: {"mask": self.keep[s].astype(np.float32),
                "mean": np.asarray(self.means[s], np.float32)}
            for s in self.keep}

  def task(self):
    """The task as it was pruned (same generator settings, same pairs)."""
    tasks_cfg = self.doc.get("tasks_config")
    cfg = self.run.config if tasks_cfg is None else overlay_config(
        self.run.config, {"tasks": tasks_cfg})
    return tasks_lib.build_all(cfg, self.run.tokenizer,
                               names=[self.name])[self.name]

  @property
  def calibration(self) -> dict:
    """The logit scale (> 0) and shift fitted on the task's train pairs."""
    return self.doc["calibration"]

  def evaluate(self, split: str = "test", calibrated: bool = False) -> dict:
    """{loss, accuracy, n} of the circuit alone; calibrated=True applies its
    stored calibration (circuit.json's `circuit` loss on the test split,
    uncalibrated its `circuit_uncalibrated`)."""
    return self.run.evaluate(self.task(), self.apply(), split,
                             self.calibration if calibrated else None)


def load(workdir: str, step: int | None = None, overlay=None,
         devices=None) -> Run:
  """Restores a run's parameters (the latest checkpoint, or `step`) with its
  own config, `overlay` laid over it (see `overlay_config`)."""
  workdir = os.fspath(workdir)
  config = overlay_config(checkpoints.load_config(workdir, step), overlay)
  ctx = context(config, devices)
  params, step = checkpoints.restore_params(workdir, ctx.abstract_params,
                                            step)
  return Run(workdir, config, ctx, params, int(step))

"""`--mode=compare`: circuit size of weight-sparse vs dense models at matched
pretraining loss, over every task all of them learn (the paper's Figure 2;
method.md §9).

A family of models (`config.compare.models`: weight-sparse at several L0
levels, dense at several widths) trains on the same data and token budget,
each in WORKDIR/<model>/ with the ordinary run layout, so every other mode
works on it. The existing modes run as library functions, one stage each:

  data      the tokenizer, built once in WORKDIR/data and shared by all
  lr        train.run, short  -> WORKDIR/lr/<model>/x<m>/lr_trial.json
  train     train.run        -> WORKDIR/<model>/checkpoints/<num_steps>
  eval      evaluate.run     -> WORKDIR/<model>/eval_summary.json
  prune     prune.run, one task at a time
                             -> WORKDIR/<model>/circuits/<task>/circuit.json
  report    viz.run (the viewer pages) and WORKDIR/compare/{summary.json,
            index.html, frontier.png}

Every stage is resumable: a model whose checkpoint at num_steps exists (with
the same model, sparsity, optimizer and data settings) is not trained again;
an eval or a circuit is reused when its output is there for the trained step
and WORKDIR/compare/stages.json records it with the same settings. A killed
compare, started again, resumes where it stopped (training itself resumes
from its last checkpoint).

The rules, the same for every model:
- Learning rate: of compare.lr_multipliers (0.5, 1, 2) x the recipe's
  opt.lr, the one whose short run (compare.lr_steps steps, in
  WORKDIR/lr/<model>/x<m>/, each a resumable stage) reaches the best
  held-out LM loss; summary.json records the trials and the choice.
- Tasks: those every model gets right on >= compare.min_accuracy of the
  held-out pairs (compare.select_by = "pair_accuracy", the README's
  measure: a pair counts when the model favours each prompt's own answer
  more than the other prompt does; "accuracy": per prompt), in the suite's
  order, the first compare.max_tasks of them; not a task the bigram table
  alone solves (compare.skip_bigram_solvable).
- Target: one target loss per task for every model, the larger of
  prune.target_loss and compare.target_factor times the worst model's
  full-model task loss on the held-out pairs (compare.target_rule=
  "relative"; the paper's 0.15 is below what small models reach on most
  tasks, and the factor leaves room for the search, which runs on the
  training pairs), or prune.target_loss alone ("absolute"). A task whose
  circuit misses the target in any model is left out of the means, with
  the reason.
- Ablation: every circuit is pruned under each of compare.ablations
  ("mean", "zero"; prune.ablation); the first gives the headline and the
  circuits in WORKDIR/<model>/circuits, the others go to
  WORKDIR/<model>/ablation_<name>/circuits and summary.json's by_ablation.
- Circuit size: weight edges (nonzero weights between kept nodes; the
  residual connections are not weights) and nodes; the geometric mean over
  tasks counts a circuit with 0 edges as 1, and its interval is a seeded
  bootstrap over tasks.
- Matched loss: log-edges of the dense frontier are linear in loss between
  the two nearest dense models around a sparse model's loss; outside the
  dense range the line through the two nearest is extended and the ratio is
  flagged as extrapolated. The headline is the geometric mean of the
  dense/sparse ratios of the sparse models inside the dense range (of all of
  them, flagged, if none is). `decomposition` takes each ratio apart into
  nodes, connectable pairs per node and effective density.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import time

import numpy as np

from sparse_circuits import checkpoints
from sparse_circuits import config_lib
from sparse_circuits import data
from sparse_circuits import errors
from sparse_circuits import evaluate
from sparse_circuits import reporting
from sparse_circuits import runs
from sparse_circuits import sites as sites_lib
from sparse_circuits import sparsity
from sparse_circuits import train
from sparse_circuits import viz
from sparse_circuits.circuits import prune
from sparse_circuits.experiments import compare_page
from sparse_circuits.experiments import decomposition
from sparse_circuits.experiments import frontier
from sparse_circuits.tasks import suite as task_suite

_log = reporting.get(__name__)

FAMILIES = ("sparse", "dense")
_RESERVED = ("compare", "data", "lr")  # WORKDIR/<these> are not models
SELECT_BY = ("pair_accuracy", "accuracy")
# What summary.json's by_ablation holds of each ablation's summary.
_BY_ABLATION = ("compared_tasks", "headline", "matched", "decomposition")
TARGET_RULES = ("relative", "absolute")
# Settings a finished model must share with the config to be reused.
_MODEL_SECTIONS = ("model", "sparsity", "opt")
_MODEL_FIELDS = ("seed", "train.num_steps", "train.batch_size", "data.seed",
                 "data.sources", "data.max_corpus_bytes",
                 "data.eval_fraction")


# ------------------------------------------------------------------ models


@dataclasses.dataclass(frozen=True)
class Model:
  name: str
  family: str
  config: object  # the run's full ConfigDict
  workdir: str


def model_config(config, spec):
  """The run config of one model of the family: the base config with the
  spec's width, and for "sparse" its pfrac and expansion factor (dense: the
  same model with every weight kept and no activation sparsity)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    del c["compare"]
  d = int(spec.d_model)
  if d % c.model.d_head:
    raise errors.ConfigError(f"compare model width {d} is not a multiple "
                             f"of model.d_head={c.model.d_head}")
  c.model.d_model, c.model.d_mlp = d, 4 * d
  c.model.n_head = d // c.model.d_head
  if spec.family == "sparse":
    c.sparsity.enabled = True
    c.sparsity.pfrac = float(spec.pfrac)
    c.sparsity.expansion_factor = float(spec.expansion_factor)
    c.model.afrac = float(spec.get("afrac", config.model.afrac))
  else:
    c.sparsity.enabled = False
    c.model.afrac = 0.0
    c.sparsity.pfrac = c.sparsity.expansion_factor ** 2
  return c


def models(config, workdir: str) -> list[Model]:
  """The family, validated before anything runs (names the bad field)."""
  cc = config.compare
  out = []
  for name, spec in cc.models.items():
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in _RESERVED:
      raise errors.ConfigError(
          f"config.compare.models.{name}: want a plain directory name "
          f"other than {', '.join(map(repr, _RESERVED))}")
    if spec.get("family") not in FAMILIES:
      raise errors.ConfigError(
          f"config.compare.models.{name}.family: want one of {FAMILIES}, "
          f"got {spec.get('family')!r}")
    need = ("d_model",) + (("pfrac", "expansion_factor")
                           if spec.family == "sparse" else ())
    for f in need:
      if spec.get(f) is None:
        raise errors.ConfigError(
            f"config.compare.models.{name}.{f}: missing")
    c = model_config(config, spec)
    try:
      config_lib.validate(c)
    except ValueError as e:
      raise errors.ConfigError(f"config.compare.models.{name}: {e}") from e
    out.append(Model(name, spec.family, c, os.path.join(workdir, name)))
  for fam in FAMILIES:
    if sum(m.family == fam for m in out) < 2:
      raise errors.ConfigError(
          f"config.compare.models: need at least two {fam} models (a "
          "frontier needs two points)")
  if cc.target_rule not in TARGET_RULES:
    raise errors.ConfigError(f"config.compare.target_rule: want one of "
                             f"{TARGET_RULES}, got {cc.target_rule!r}")
  if cc.target_factor < 1:
    raise errors.ConfigError("config.compare.target_factor: must be >= 1 "
                             "(a circuit cannot beat the worst full model)")
  if any(float(x) <= 0 for x in cc.lr_multipliers) or (
      cc.lr_multipliers and cc.lr_steps < 1):
    raise errors.ConfigError(
        "config.compare.lr_multipliers: want positive multipliers of "
        "opt.lr and compare.lr_steps >= 1")
  ab = list(cc.ablations)
  if not ab or len(set(ab)) < len(ab) or any(
      a not in sites_lib.ABLATIONS for a in ab):
    raise errors.ConfigError(
        f"config.compare.ablations: want distinct ones of "
        f"{sites_lib.ABLATIONS} (the first is the headline's), got {ab}")
  if cc.select_by not in SELECT_BY:
    raise errors.ConfigError(f"config.compare.select_by: want one of "
                             f"{SELECT_BY}, got {cc.select_by!r}")
  if not 0 <= cc.min_accuracy <= 1:
    raise errors.ConfigError(
        "config.compare.min_accuracy: must be in [0, 1]")
  return out


def _get(d: dict, dotted: str):
  for k in dotted.split("."):
    d = d.get(k, {}) if isinstance(d, dict) else {}
  return d


def _json(x):
  return json.loads(json.dumps(x, default=str))


def _mismatch(stored, wanted) -> list[str]:
  """Fields where a stored run config differs from the wanted one."""
  s, w = _json(stored.to_dict()), _json(wanted.to_dict())
  bad = [f"{sec}.{k}" for sec in _MODEL_SECTIONS
         for k in sorted(set(s.get(sec, {})) & set(w.get(sec, {})))
         if s[sec][k] != w[sec][k]]
  return bad + [f for f in _MODEL_FIELDS if _get(s, f) != _get(w, f)]


# ------------------------------------------------------------------ stages


def fingerprint(obj) -> str:
  return hashlib.sha256(json.dumps(_json(obj), sort_keys=True).encode()
                        ).hexdigest()[:16]


class StageLog:
  """WORKDIR/compare/stages.json: {stage: {fingerprint, seconds, finished}},
  rewritten after every finished stage."""

  def __init__(self, path: str):
    self.path = path
    try:
      with open(path) as f:
        self.stages = json.load(f)
    except (OSError, ValueError):
      self.stages = {}

  def done(self, key: str, fp: str) -> bool:
    return self.stages.get(key, {}).get("fingerprint") == fp

  def total_seconds(self) -> float:
    """The stages' seconds added up, each counted once: an LR trial's stage
    (lr/M/xK) holds its training's (train/M/xK). A stage that was
    interrupted counts only the invocation that finished it."""
    return sum(v["seconds"] for k, v in self.stages.items()
               if not (k.startswith("train/") and "lr/" + k[6:] in self.stages))

  def record(self, key: str, fp: str, seconds: float):
    self.stages[key] = {"fingerprint": fp, "seconds": round(seconds, 2),
                        "finished": time.time()}
    reporting.write_json(self.path, self.stages)


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _timed(log, key, fp, fn, *args):
  t0 = time.perf_counter()
  out = fn(*args)
  log.record(key, fp, time.perf_counter() - t0)
  return out


def _train(m: Model, log: StageLog, key: str | None = None):
  """Trains m (or reuses its finished run); `key`: its stage's name."""
  n = m.config.train.num_steps
  if checkpoints.latest_step(m.workdir) is not None:
    bad = _mismatch(checkpoints.load_config(m.workdir), m.config)
    if bad:
      raise errors.ConfigError(
          f"{m.workdir} holds a run with other settings ({', '.join(bad)}) "
          "than config.compare asks for: remove it or use another --workdir")
  if checkpoints.latest_step(m.workdir) == n:
    _log.info(f"[compare] {m.name}: trained to step {n}, reused")
    return
  _log.info(f"[compare] {m.name}: training ({m.family}, d_model "
            f"{m.config.model.d_model}, lr {m.config.opt.lr:.3g}, {n} steps)")
  _timed(log, key or f"train/{m.name}", fingerprint(m.config.to_dict()),
         train.run, m.config, m.workdir)


def _lr_trial(m: Model, mult: float, cc, workdir: str, log: StageLog):
  """Held-out LM loss after cc.lr_steps steps at mult x the recipe's LR,
  in WORKDIR/lr/<model>/x<mult>/ (inf if the run diverged)."""
  c = m.config.copy_and_resolve_references()
  c.opt.lr = float(m.config.opt.lr * mult)
  c.train.num_steps = int(cc.lr_steps)
  c.train.eval_every = c.train.checkpoint_every = int(cc.lr_steps)
  trial = Model(f"{m.name}/x{mult:g}", m.family, c,
                os.path.join(workdir, "lr", m.name, f"x{mult:g}"))
  key = f"lr/{trial.name}"
  fp = fingerprint(c.to_dict())
  path = os.path.join(trial.workdir, "lr_trial.json")
  old = _read_json(path)
  if log.done(key, fp) and old is not None:
    return old["lm_loss"]
  t0 = time.perf_counter()
  try:
    _train(trial, log, key=f"train/{trial.name}")
    loss = evaluate.lm_loss(runs.load(trial.workdir, step=c.train.num_steps),
                            c.train.eval_batches)
  except FloatingPointError as e:  # diverged: this LR loses
    _log.info(f"[compare] {trial.name}: {e}")
    loss = math.inf
  reporting.write_json(path, {"lr": c.opt.lr, "lm_loss": loss,
                              "steps": c.train.num_steps})
  log.record(key, fp, time.perf_counter() - t0)
  return loss


def choose_lr(m: Model, cc, workdir: str, log: StageLog) -> dict | None:
  """The LR rule, the same for every model: of cc.lr_multipliers x the
  recipe's LR, the one with the best held-out loss after cc.lr_steps steps
  (ties: the first). Sets m's LR; None when there is no sweep."""
  mults = [float(x) for x in cc.lr_multipliers]
  if not mults:
    return None
  recipe = float(m.config.opt.lr)
  losses = [_lr_trial(m, x, cc, workdir, log) for x in mults]
  best = min(range(len(mults)), key=lambda i: (not math.isfinite(
      losses[i]), losses[i]))
  m.config.opt.lr = recipe * mults[best]
  _log.info(f"[compare] {m.name}: lr {m.config.opt.lr:.3g} (x{mults[best]:g}"
            f" the recipe's; held-out losses after {cc.lr_steps} steps "
            + ", ".join(f"x{x:g} {v:.4f}" for x, v in zip(mults, losses))
            + ")")
  return {"recipe": recipe, "chosen": m.config.opt.lr,
          "multiplier": mults[best], "steps": int(cc.lr_steps),
          "trials": [{"multiplier": x, "lr": recipe * x, "lm_loss": v}
                     for x, v in zip(mults, losses)]}


def _eval(m: Model, log: StageLog) -> dict:
  step = m.config.train.num_steps
  key = f"eval/{m.name}"
  fp = fingerprint({"step": step, "tasks": m.config.tasks.to_dict(),
                    "eval_batches": m.config.train.eval_batches})
  path = os.path.join(m.workdir, "eval_summary.json")
  old = _read_json(path)
  if log.done(key, fp) and old and old.get("step") == step:
    _log.info(f"[compare] {m.name}: eval at step {step} reused")
    return old
  _log.info(f"[compare] {m.name}: evaluating")
  return _timed(log, key, fp, evaluate.run, m.config, m.workdir)


def _circuit_config(m: Model, task: str, target: float, ablation: str):
  c = m.config.copy_and_resolve_references()
  c.prune.tasks = (task,)
  c.prune.target_loss = float(target)
  c.prune.ablation = ablation
  return c


def ablation_workdir(m: Model, ablation: str, headline: str) -> str:
  """Where m's circuits under `ablation` go: its own workdir for the
  headline's ablation, else WORKDIR/<model>/ablation_<name>/, a workdir
  whose checkpoints, data and means are links to the model's."""
  if ablation == headline:
    return m.workdir
  wd = os.path.join(m.workdir, f"ablation_{ablation}")
  os.makedirs(wd, exist_ok=True)
  for sub in ("checkpoints", "data", "prune"):
    os.makedirs(os.path.join(m.workdir, sub), exist_ok=True)
    if not os.path.lexists(os.path.join(wd, sub)):
      os.symlink(os.path.join("..", sub), os.path.join(wd, sub))
  return wd


def _prune(m: Model, task: str, target: float, log: StageLog,
           ablation: str, headline: str) -> dict:
  step = m.config.train.num_steps
  c = _circuit_config(m, task, target, ablation)
  key = f"prune/{m.name}/{task}" + (
      "" if ablation == headline else f"/{ablation}")
  fp = fingerprint({"step": step, "prune": c.prune.to_dict(),
                    "tasks": c.tasks.to_dict()})
  wd = ablation_workdir(m, ablation, headline)
  path = os.path.join(wd, "circuits", task, "circuit.json")
  old = _read_json(path)
  if (log.done(key, fp) and old and old.get("model", {}).get("step") == step
      and old.get("ablation", sites_lib.MEAN) == ablation):
    _log.info(f"[compare] {m.name}/{task} ({ablation}): circuit reused")
    return old
  _log.info(f"[compare] {m.name}/{task}: pruning to target loss "
            f"{target:.4f}, {ablation} ablation")
  _timed(log, key, fp, prune.run, c, wd)
  doc = _read_json(path)
  if doc is None:
    raise RuntimeError(f"--mode=prune wrote no readable {path}")
  return doc


# -------------------------------------------------------------- statistics


def weight_edges(circuit: dict) -> int:
  """Nonzero weights between kept nodes: `counts.edges` from circuit.json
  schema 2 on; in schema 1 that count also held the residual connections."""
  if circuit.get("schema_version", 1) >= 2:
    return int(circuit["counts"]["edges"])
  return sum(e.get("kind") != "residual" for e in circuit.get("edges", []))


# ------------------------------------------------------------------- run


def _l0(m: Model) -> dict:
  """Nonzero and total entries of the matrices weight sparsity acts on
  (the same matrices for sparse and dense models)."""
  import jax  # pylint: disable=g-import-not-at-top
  r = runs.load(m.workdir, step=m.config.train.num_steps)
  nz = total = 0
  for path, w in jax.tree_util.tree_flatten_with_path(r.params)[0]:
    p = sparsity.path_str(path)
    if any(re.search(rule[0], p) for rule in sparsity.MATRIX_RULES):
      nz += int(np.count_nonzero(np.asarray(jax.device_get(w))))
      total += int(np.prod(w.shape))
  return {"l0": nz, "matrix_entries": total}


def _bigram_solvable(name: str) -> bool:
  gen = task_suite.GENERATORS.get(name)
  return gen is not None and not gen.bigram_proof


def _select_tasks(ms, evals, cc) -> tuple[list[str], dict]:
  """Tasks every model learns (cc.select_by: held-out pair accuracy or
  per-prompt accuracy), in the first model's eval order."""
  status, chosen = {}, []
  for m in ms:
    for name, reason in evals[m.name].get("skipped", {}).items():
      status.setdefault(name, {"status": "skipped",
                               "reason": f"eval skipped it in {m.name}: "
                                         f"{reason}"})
  for name in evals[ms[0].name]["tasks"]:
    low = [(m.name, evals[m.name]["tasks"].get(name, {}).get(cc.select_by))
           for m in ms]
    missing = [n for n, a in low if a is None or not math.isfinite(a)]
    low = [(n, a) for n, a in low if a is not None and a < cc.min_accuracy]
    if cc.skip_bigram_solvable and _bigram_solvable(name):
      status[name] = {"status": "skipped", "reason": "a bigram model solves "
                      "it (the decisive token is the prompt's last): the "
                      "bigram table answers it outside every node, so its "
                      "circuit size says nothing"}
    elif missing:
      status[name] = {"status": "skipped",
                      "reason": f"no {cc.select_by} (not evaluated, or "
                                f"no pairs) in {', '.join(missing)}"}
    elif low:
      status[name] = {"status": "skipped", "reason": f"{cc.select_by} "
                      f"below {cc.min_accuracy} in " + ", ".join(
                          f"{n} ({a:.2f})" for n, a in low)}
    elif cc.max_tasks and len(chosen) >= cc.max_tasks:
      status[name] = {"status": "skipped", "reason": "learned by every "
                      f"model, beyond compare.max_tasks={cc.max_tasks}"}
    else:
      chosen.append(name)
      status[name] = {"status": "compared"}
  return chosen, status


def _target(ms, evals, task, pc, cc) -> float:
  if cc.target_rule == "absolute":
    return float(pc.target_loss)
  worst = max(evals[m.name]["tasks"][task]["loss"] for m in ms)
  return float(max(pc.target_loss, cc.target_factor * worst))


def summarize(ms, evals, l0s, circuits, task_status, targets, cc,
              lrs=None) -> dict:
  """summary.json's content from what the stages wrote (`lrs`: each
  model's `choose_lr`)."""
  compared = [t for t, s in task_status.items() if s["status"] == "compared"]
  for t in list(compared):
    missed = [m.name for m in ms if not circuits[m.name][t].get(
        "target_reached", True)]
    if missed:
      task_status[t] = {"status": "dropped", "target": targets[t],
                        "reason": "circuit misses the target loss "
                        f"{targets[t]:.4f} in {', '.join(missed)}"}
      compared.remove(t)
  out_models = {}
  for m in ms:
    tasks = {}
    for t, doc in circuits[m.name].items():
      L = doc.get("losses", {})
      ev = evals[m.name]["tasks"][t]
      tasks[t] = {"accuracy": ev["accuracy"],
                  "pair_accuracy": ev.get("pair_accuracy"),
                  "full_model_loss": L.get("full_model"),
                  "circuit_loss": L.get("circuit"), "target": targets[t],
                  "reached": doc.get("target_reached"),
                  "edges": weight_edges(doc),
                  "nodes": int(doc["counts"]["nodes"]),
                  "viewer": f"../{m.name}/circuits/{t}/index.html"}
    out_models[m.name] = {
        "family": m.family, "workdir": os.path.abspath(m.workdir),
        "d_model": m.config.model.d_model,
        "pfrac": m.config.sparsity.pfrac if m.family == "sparse" else None,
        "expansion_factor": m.config.sparsity.expansion_factor,
        "lm_loss": evals[m.name]["lm_loss"], **l0s[m.name],
        "lr": (lrs or {}).get(m.name) or {"chosen": m.config.opt.lr},
        "tasks": tasks}
  summary = {"models": out_models, "tasks": task_status,
             "compared_tasks": compared, "target_rule": cc.target_rule,
             "min_accuracy": cc.min_accuracy, "select_by": cc.select_by,
             "bootstrap": {"n": cc.bootstrap, "seed": cc.seed,
                           "level": 0.95}}
  names = [m.name for m in ms]
  fams = [m.family for m in ms]
  losses = [out_models[n]["lm_loss"] for n in names]
  if not compared:
    summary["headline"] = None
    return summary
  for what in ("edges", "nodes"):
    v = np.asarray([[out_models[n]["tasks"][t][what] for t in compared]
                    for n in names], np.float64)
    lo, hi = frontier.bootstrap(v, lambda s: [frontier.geomean(r) for r in s],
                                cc.bootstrap, cc.seed)
    for k, n in enumerate(names):
      out_models[n][f"geomean_{what}"] = frontier.geomean(v[k])
      out_models[n][f"geomean_{what}_ci"] = [float(lo[k]), float(hi[k])]
    if what == "edges":
      edges = v
  gm = [out_models[n]["geomean_edges"] for n in names]
  rows, head = frontier.matched_ratios(losses, fams, gm)

  def stat(s):
    r, h = frontier.matched_ratios(losses, fams,
                                   [frontier.geomean(x) for x in s])
    return [x["ratio"] for x in r] + [h["ratio"]]

  lo, hi = frontier.bootstrap(edges, stat, cc.bootstrap, cc.seed)
  summary["matched"] = [
      {"sparse": names[r["model"]], "lm_loss": losses[r["model"]],
       "sparse_edges": gm[r["model"]],
       "dense_edges_at_loss": r["dense_edges_at_loss"], "ratio": r["ratio"],
       "ratio_ci": [float(lo[k]), float(hi[k])],
       "extrapolated": r["extrapolated"],
       "dense_models": [names[i] for i in r["dense_models"]]}
      for k, r in enumerate(rows)]
  summary["headline"] = {
      "ratio": head["ratio"], "ratio_ci": [float(lo[-1]), float(hi[-1])],
      "extrapolated": head["extrapolated"], "n_tasks": len(compared),
      "sparse_models": [names[i] for i in head["sparse_models"]]}
  per_task = {n: {t: decomposition.quantities(circuits[n][t])
                  for t in compared} for n in names}
  summary["decomposition"] = decomposition.decompose(
      names, fams, losses, per_task, compared,
      summary["headline"]["sparse_models"])
  return summary


def format_table(summary: dict) -> str:
  """The terminal table: one row per model, then the matched ratios."""
  tasks = summary["compared_tasks"]
  rows = [f"{'model':<18} {'family':<7} {'LR':>8} {'LM loss':>8} {'L0':>10} "
          f"{'gm edges [95% CI]':>24} {'gm nodes':>9}"
          + "".join(f" {t[:14]:>14}" for t in tasks)]
  order = sorted(summary["models"].items(),
                 key=lambda kv: (kv[1]["family"], kv[1]["lm_loss"]))
  for name, m in order:
    ci = m.get("geomean_edges_ci")
    gm = (f"{m['geomean_edges']:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]"
          if ci else "n/a")
    nodes = f"{m['geomean_nodes']:.1f}" if "geomean_nodes" in m else "n/a"
    lr = (m.get("lr") or {}).get("chosen")
    lr = f"{lr:.3g}" if lr is not None else "n/a"
    rows.append(f"{name:<18} {m['family']:<7} {lr:>8} {m['lm_loss']:>8.4f} "
                f"{m['l0']:>10,} {gm:>24} {nodes:>9}"
                + "".join(f" {m['tasks'][t]['edges']:>14,}" for t in tasks))
  for r in summary.get("matched", []):
    rows.append(
        f"{r['sparse']}: dense frontier at loss {r['lm_loss']:.4f} has "
        f"{r['dense_edges_at_loss']:.1f} edges -> {r['ratio']:.2f}x "
        f"[{r['ratio_ci'][0]:.2f}, {r['ratio_ci'][1]:.2f}]"
        + (" (EXTRAPOLATED beyond the dense models' losses)"
           if r["extrapolated"] else
           f" (between {' and '.join(r['dense_models'])})"))
  h = summary.get("headline")
  if h:
    rows.append(f"headline: dense/sparse geometric-mean edges at matched "
                f"loss {h['ratio']:.2f}x [{h['ratio_ci'][0]:.2f}, "
                f"{h['ratio_ci'][1]:.2f}] over {h['n_tasks']} tasks"
                + (" (extrapolated)" if h["extrapolated"] else ""))
    for a, s in summary.get("by_ablation", {}).items():
      if a != summary.get("ablation") and s.get("headline"):
        sh = s["headline"]
        rows.append(f"  under {a} ablation: {sh['ratio']:.2f}x "
                    f"[{sh['ratio_ci'][0]:.2f}, {sh['ratio_ci'][1]:.2f}] "
                    f"over {sh['n_tasks']} tasks")
    d = (summary.get("decomposition") or {}).get("headline")
    if d:
      rows.append("  taken apart (dense/sparse at matched loss): "
                  + ", ".join(f"{q} {d[q]:.2f}x" for q in
                              decomposition.QUANTITIES))
  else:
    rows.append("no task is learned by every model: no circuits compared")
  for t, s in summary["tasks"].items():
    if s["status"] != "compared":
      rows.append(f"{s['status']} {t}: {s['reason']}")
  return "\n".join(rows)


def _finite(x):
  """JSON-safe: NaN/inf -> None, numpy scalars -> Python numbers."""
  if isinstance(x, dict):
    return {k: _finite(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_finite(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


def _shared_tokenizer(config, workdir: str) -> str:
  """The tokenizer all models use: the config's, else one built once."""
  if config.data.tokenizer_dir:
    return os.path.abspath(config.data.tokenizer_dir)
  base = config.copy_and_resolve_references()
  with base.unlocked():
    del base["compare"]
  return os.path.abspath(data.prepare(base, workdir).tokenizer_dir)


def run(config, workdir: str) -> dict:
  """`--mode=compare`: trains, evaluates and prunes the family (resuming any
  finished stage) and writes WORKDIR/compare/{summary.json,index.html}."""
  t0 = time.perf_counter()
  cc = config.compare
  ms = models(config, workdir)  # validates before anything runs
  out_dir = os.path.join(workdir, "compare")
  os.makedirs(out_dir, exist_ok=True)
  log = StageLog(os.path.join(out_dir, "stages.json"))
  tok_dir = _shared_tokenizer(config, workdir)
  for m in ms:
    m.config.data.tokenizer_dir = tok_dir
  lrs = {m.name: choose_lr(m, cc, workdir, log) for m in ms}
  for m in ms:
    _train(m, log)
  evals = {m.name: _eval(m, log) for m in ms}
  chosen, task_status = _select_tasks(ms, evals, cc)
  targets = {t: _target(ms, evals, t, config.prune, cc) for t in chosen}
  for t in chosen:
    task_status[t]["target"] = targets[t]
  ablations = list(cc.ablations)  # the first is the headline's
  circuits = {a: {m.name: {} for m in ms} for a in ablations}
  for t in chosen:  # task-major: a killed compare has whole tasks done
    for a in ablations:
      for m in ms:
        circuits[a][m.name][t] = _prune(m, t, targets[t], log, a,
                                        ablations[0])
  for m in ms:
    if chosen:
      viz.run(m.config, m.workdir)
  l0s = {m.name: _l0(m) for m in ms}
  statuses = {a: copy.deepcopy(task_status) for a in ablations}
  by_ablation = {a: summarize(ms, evals, l0s, circuits[a], statuses[a],
                              targets, cc, lrs) for a in ablations}
  summary = by_ablation[ablations[0]]
  summary["ablation"] = ablations[0]
  summary["by_ablation"] = {a: {k: s.get(k) for k in _BY_ABLATION}
                            for a, s in by_ablation.items()}
  summary["settings"] = {  # the seeds and the search, the same for all
      "seed": config.seed, "data_seed": config.data.seed,
      "num_steps": config.train.num_steps,
      "batch_size": config.train.batch_size,
      "tasks": config.tasks.to_dict(), "prune": config.prune.to_dict()}
  summary["environment"] = reporting.environment()
  summary["seconds"] = {"this_invocation": time.perf_counter() - t0,
                        "stages": log.total_seconds()}
  path = reporting.write_json(os.path.join(out_dir, "summary.json"),
                              _finite(summary), allow_nan=False)
  page = compare_page.write(summary, out_dir)
  _log.info(f"{format_table(summary)}\nwrote {path} and {page}")
  return summary

"""`--mode=prune`: learn node masks on a trained model, find the smallest
circuit that keeps the task loss at the target, and check it (paper §2.2,
App. A.5).

A program separate from training: it restores parameters only, never builds
the training optimizer, and hands the model a pytree of interventions
(x <- m*x + (1-m)*mean, m = H(tau)) keyed by site name.

Where the authors ran hundreds of sequential runs per task, every setting of
the sweep (k_coef, lr, temperature, init mean, seed) trains its masks in one
jitted, vmapped program, and the k search bisects every setting's node
ranking at once (one batched evaluation per round). What a sceptical reader
needs is part of every circuit (`controls.py`): the logit calibration
(positive scale, shift) is fitted on the train pairs and scored on the test
pairs; the selected setting is pruned again with other seeds; the same
prompts with labels drawn by a coin per pair, and a randomly initialised
model, are pruned the same way.
"""

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from sparse_circuits import data
from sparse_circuits import layout
from sparse_circuits import model as model_lib
from sparse_circuits import reporting
from sparse_circuits import runs
from sparse_circuits import sites as sites_lib
from sparse_circuits import sparsity
from sparse_circuits.circuits import controls
from sparse_circuits.circuits import document as circuit_lib
from sparse_circuits.circuits import search
from sparse_circuits.tasks import binary as tasks_lib

_log = reporting.get(__name__)


# ---------------------------------------------------------------- means

def compute_means(params, cfg, batches, sites):
  """Mean activation of every node over pretraining batches, per site."""
  names = tuple(s.name for s in sites)

  @jax.jit
  def batch_sums(tokens):
    _, acts = model_lib.forward(params, tokens, cfg, capture=names)
    return {k: jnp.sum(v.astype(jnp.float32), axis=(0, 1))
            for k, v in acts.items()}

  total, count = None, 0
  for b in batches:
    tokens = jnp.asarray(b[:, :-1])
    sums = batch_sums(tokens)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    count += tokens.shape[0] * tokens.shape[1]
  return {k: np.asarray(v / count) for k, v in total.items()}


class Clock:
  """Seconds per phase, for circuit.json (where a task's time goes)."""

  def __init__(self):
    self.laps, self._t = {}, time.perf_counter()

  def lap(self, name):
    now = time.perf_counter()
    self.laps[name] = self.laps.get(name, 0.0) + now - self._t
    self._t = now


class Evaluator:
  """The selected circuit's test losses, for node annotations: the
  calibration stays the circuit's (fitted on train)."""

  def __init__(self, pruner, test, ab):
    self.pruner, self.test, self.ab = pruner, test, np.asarray(ab)

  def losses(self, keeps):
    """Calibrated test loss of each node set (site -> bool dicts)."""
    flat = np.stack([np.concatenate([k[s.name] for s in self.pruner.sites])
                     for k in keeps])
    d = self.pruner.diffs(flat, self.test)
    return search.bce(d, np.tile(self.ab, (len(flat), 1)),
                      self.pruner.signs(self.test, len(flat)))

  def loss(self, keep):
    return float(self.losses([keep])[0])


# ---------------------------------------------------------------- one task

@dataclasses.dataclass(frozen=True, eq=False)
class TaskResult:
  """One task's pruning (`prune_task`): the circuit and every block of
  circuit.json that the search measures (docs/circuit_json.md;
  `document.document` writes them)."""
  keep: dict              # site -> bool [width]: the circuit
  tau: dict               # site -> float [width]: the selected setting's
  setting: dict           # the selected sweep setting
  k: int                  # circuit nodes
  reached: bool           # target reached on test (calibrated if pc.calibrate)
  target_reached: dict    # {"train", "test_calibrated", "test_uncalibrated"}
  selected: int           # index of the selected setting in the sweep
  search_seconds: float   # mask training and k search
  seconds: dict           # per phase
  sweep: list             # one record per setting
  losses: dict
  calibration: dict       # {"scale", "shift", "fitted_on"}
  loss_vs_k: list
  stability: dict | None
  nonsense_control: dict | None
  seed_counts: dict       # site -> int [width]: seeds keeping each node
  evaluator: "Evaluator"  # the circuit's test losses, for annotations


def prune_task(pruner, task, progress=True, settings=None) -> TaskResult:
  """Sweep, select, confirm and control one task."""
  pc, n, target = pruner.pc, pruner.n_nodes, pruner.pc.target_loss
  settings = settings or search.sweep_settings(pc)
  clock = Clock()
  tau, last, bad = pruner.train(task.train, settings, progress=progress)
  clock.lap("sweep_masks")
  # The smallest circuit reaching the target on train, confirmed on test;
  # a leader that fails on test is excluded and the search runs again.
  excluded = set(np.nonzero(bad)[0].tolist())  # diverged: never selected
  for attempt in range(4):
    sr = pruner.search(tau, task.train, target, progress=progress,
                       exact=False, exclude=sorted(excluded))
    sc = pruner.scores(sr.keep, task.train, task.test,
                       d_train=sr.d_train)
    ok = sr.reached & ~bad
    confirmed = ok & (sc.test <= target)
    lead = min(range(len(settings)), key=lambda i: (
        i in excluded, not ok[i], sr.k[i], sr.train_loss[i]))
    if confirmed[lead] or not ok[lead] or lead in excluded or attempt == 3:
      break
    excluded.add(lead)
  sel = min(range(len(settings)), key=lambda i: (
      not confirmed[i], not ok[i], bool(bad[i]), sr.k[i],
      sr.train_loss[i]))
  clock.lap("sweep_k_search")
  sweep = [{"setting": dataclasses.asdict(s), "diverged": bool(bad[i]),
            "final_task_loss": float(last["task_loss"][i]),
            "final_nodes": float(last["nodes"][i]),
            "nodes": int(sr.k[i]), "exact": bool(sr.exact[i]),
            "train_loss": float(sr.train_loss[i]),
            "test_loss": float(sc.test[i]),
            "test_loss_uncalibrated": float(sc.test_raw[i]),
            "reached_train": bool(ok[i]), "reached_test": bool(confirmed[i])}
           for i, s in enumerate(settings)]
  circuit = sr.keep[sel]
  seeds = controls.stability_and_nonsense(pruner, task, settings[sel],
                                          circuit, len(settings), progress)
  clock.lap("stability_and_nonsense")
  ks = sorted(set(np.unique(np.round(np.geomspace(1, n, 12))).astype(int)) |
              {int(sr.k[sel])})
  curve = pruner.scores(
      np.stack([search.keep_flat(sr.order[sel], k, n) for k in ks] +
               [np.ones(n, bool)]), task.train, task.test)
  ablated = search.bce(pruner.diffs(~circuit[None], task.test))[0]
  clock.lap("validation")
  losses = {"full_model": float(curve.test_raw[-1]),
            "circuit": float(sc.test[sel]),
            "circuit_uncalibrated": float(sc.test_raw[sel]),
            "circuit_train": float(sr.train_loss[sel]),
            "circuit_ablated": float(ablated), "target": target}
  reached = {"train": bool(ok[sel]),
             "test_calibrated": bool(sc.test[sel] <= target),
             "test_uncalibrated": bool(sc.test_raw[sel] <= target)}
  ab = sc.ab[sel]
  return TaskResult(
      keep=pruner.index.split(circuit),
      tau=pruner.index.split(tau[sel]),
      setting=sweep[sel]["setting"], k=int(sr.k[sel]),
      reached=reached["test_calibrated" if pc.calibrate else
                      "test_uncalibrated"],
      target_reached=reached, selected=sel,
      search_seconds=clock.laps["sweep_masks"] + clock.laps["sweep_k_search"],
      seconds=clock.laps,
      sweep=sweep, losses=losses,
      calibration={"scale": float(ab[0]), "shift": float(ab[1]),
                   "fitted_on": "train"},
      loss_vs_k=[{"k": int(k), "loss": float(c), "loss_uncalibrated": float(r)}
                 for k, c, r in zip(ks, curve.test, curve.test_raw)],
      stability=seeds["stability"], nonsense_control=seeds["nonsense"],
      seed_counts=pruner.index.split(seeds["counts"]),
      evaluator=Evaluator(pruner, task.test, ab))


# ---------------------------------------------------------------- controls

def random_pruner(ctx, seed, batches, pc, sites):
  """A randomly initialised model of the same shape (sparsified to the run's
  final k when the run is sparse) with its own means, for the random-init
  control."""
  cfg = ctx.cfg
  rand = model_lib.init_params(cfg, seed + 1)
  if ctx.plan is not None:
    rand = sparsity.project(rand, ctx.plan,
                            jnp.int32(ctx.plan.schedule.num_steps))
  means = compute_means(rand, cfg, batches, sites)
  return search.Pruner(rand, cfg, means, sites, pc)


def random_control(pruner, task, res):
  """The same pruning (the setting that won on the trained model) on the
  random model: the same compiled programs, the model is an argument."""
  tau, _, bad = pruner.train(task.train, [search.Setting(**res.setting)],
                             progress=False)
  sr = pruner.search(tau, task.train, pruner.pc.target_loss)
  sc = pruner.scores(np.concatenate([sr.keep, np.ones_like(sr.keep)]),
                     task.train, task.test)
  return {"loss": float(sc.test[0]), "train_loss": float(sc.train[0]),
          "k": int(sr.k[0]),
          "reached": bool(sr.reached[0] and not bad[0]),
          "full_model": float(sc.test_raw[1])}


# ---------------------------------------------------------------- the mode

def task_names(tasks):
  """config.prune.tasks -> (names or None for all, learned?). Entries may
  hold several comma-separated names; "learned" alone selects by accuracy."""
  names = [n.strip() for t in tasks for n in str(t).split(",") if n.strip()]
  if "learned" in names:
    if len(names) > 1:
      raise ValueError('config.prune.tasks: "learned" cannot be combined '
                       f"with task names, got {names}")
    return None, True
  if not names:
    raise ValueError("config.prune.tasks names no task")
  return names, False


def choose_tasks(all_tasks, pc, params, cfg, workdir, step, learned):
  """{name: {"status": "pruned" | "skipped", "reason", "accuracy"}}. With
  "learned", a task is pruned when the model gets >= prune.min_accuracy of
  its test pairs right (from eval_summary.json of this step, else
  evaluated here): a circuit for a task the model cannot do explains
  nothing."""
  if not learned:
    return {n: {"status": "pruned", "reason": "asked for"} for n in all_tasks}
  acc = {}
  path = layout.Layout(workdir).eval_summary
  if os.path.exists(path):
    with open(path) as f:
      summary = json.load(f)
    if summary.get("step") == int(step):
      acc = {k: v["accuracy"] for k, v in summary.get("tasks", {}).items()}
  plan = {}
  for name, task in all_tasks.items():
    a = acc.get(name)
    if a is None:
      a = tasks_lib.evaluate_task(params, cfg, task.test)["accuracy"]
    if a >= pc.min_accuracy:
      plan[name] = {"status": "pruned", "accuracy": a,
                    "reason": f"accuracy {a:.3f} >= {pc.min_accuracy}"}
    else:
      plan[name] = {"status": "skipped", "accuracy": a,
                    "reason": f"accuracy {a:.3f} < prune.min_accuracy "
                              f"{pc.min_accuracy}: the model has not "
                              "learned it"}
  return plan


@dataclasses.dataclass(frozen=True)
class Setup:
  """What pruning any task of a run needs: the run (config, params,
  tokenizer), its data, the node sites, the pretraining batches and the
  mean activations every ablation uses."""
  run: runs.Run
  info: data.DataInfo
  sites: list
  batches: list
  means: dict

  def pruner(self, pc=None) -> search.Pruner:
    """The search on this run's model (`pc`: other prune settings)."""
    r = self.run
    return search.Pruner(r.params, r.cfg, self.means, self.sites,
                         r.config.prune if pc is None else pc)


def setup(workdir: str, overlay=None) -> Setup:
  """The run at `workdir` (with `overlay`, as `runs.load`), its data and
  the means over `prune.mean_batches` pretraining batches, read from
  WORKDIR/prune/means_<step>.npz when an earlier pruning wrote them, else
  computed and written there. `--mode=prune` and the benchmarks start here."""
  r = runs.load(workdir, overlay=overlay)
  config = r.config
  info = data.prepare(config, workdir, reuse=True)
  sites = sites_lib.node_sites(r.cfg)
  batches = data.eval_batches(config, info, config.prune.mean_batches)
  means_path = layout.Layout(workdir).means(r.step)
  if os.path.exists(means_path):
    means = dict(np.load(means_path))
  else:
    means = compute_means(r.params, r.cfg, batches, sites)
    os.makedirs(os.path.dirname(means_path), exist_ok=True)
    np.savez(means_path, **means)
  return Setup(r, info, sites, batches, means)


def run(config, workdir: str):
  """`--mode=prune`: one circuit.json per task of config.prune.tasks
  ("learned": every task the model gets >= prune.min_accuracy right), and
  circuits/prune_summary.json. The means, the tokenized tasks and the
  compiled programs are shared by every task."""
  s = setup(workdir, overlay=config)
  r, sites, means = s.run, s.sites, s.means
  config, cfg, params, step, tok = r.config, r.cfg, r.params, r.step, r.tokenizer
  pc = config.prune
  names, learned = task_names(pc.tasks)
  all_tasks = tasks_lib.build_all(config, tok, names=names)
  plan = choose_tasks(all_tasks, pc, params, cfg, workdir, step, learned)
  pruner = s.pruner()
  rand = (random_pruner(r.ctx, config.seed, s.batches, pc, sites)
          if pc.random_control else None)
  heldout = data.eval_batches(config, s.info, 1)[0]
  paths = []
  for name, entry in plan.items():
    if entry["status"] != "pruned":
      _log.info(f"{name}: skipped, {entry['reason']}")
      continue
    task = all_tasks[name]
    t0 = time.perf_counter()
    res = prune_task(pruner, task)
    clock = Clock()
    control = random_control(rand, task, res) if rand is not None else None
    clock.lap("random_init_control")
    doc = circuit_lib.document(
        params, cfg, task, res, means, control, tok, heldout=heldout,
        model_info={"workdir": os.path.abspath(workdir), "step": int(step),
                    "config": config.model.to_dict()},
        prune_config=pc.to_dict())
    doc["tasks_config"] = config.tasks.to_dict()  # to rebuild the same pairs
    clock.lap("document")  # edges, node annotations and their ablations
    doc["seconds"] = {**res.seconds, **clock.laps}
    doc["prune_seconds"] = time.perf_counter() - t0
    doc["flags"] = controls.flags(doc)
    path = reporting.write_json(
        layout.Layout(workdir).circuit(name), doc, default=_json_default)
    paths.append(path)
    entry.update(controls.summary_row(doc))
    _log.info(controls.summary_line(name, doc, path))
  controls.write_summary(workdir, plan, pc)
  return paths


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, (np.bool_,)):
    return bool(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(type(o))

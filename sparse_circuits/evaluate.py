"""`--mode=eval`: held-out LM loss and each task's loss and accuracy.

Restores the parameters of WORKDIR's latest checkpoint (`runs.load`): the
model's shape, the data and the tokenizer come from the config stored in that
checkpoint (so they always match the parameters); the task settings
(`tasks.*`) and the number of held-out batches come from the config on the
command line. Writes WORKDIR/eval_summary.json:
  {"lm_loss": float, "step": int,
   "tasks": {name: {"loss", "accuracy", "pair_accuracy", "n"}},
   "skipped": {name: reason}}
(`pair_accuracy`: the share of pairs whose logit difference moves towards
each prompt's own answer, tasks.evaluate_task.)
with the paper's tasks first. A task whose candidates the run's tokenizer
cannot compare (see tasks/binary.py) is skipped with its reason; the others still run.
"""


import jax
import numpy as np
from tqdm import tqdm

from sparse_circuits import data
from sparse_circuits import layout
from sparse_circuits import reporting
from sparse_circuits import runs
from sparse_circuits import sharding
from sparse_circuits.tasks import suite as task_suite
from sparse_circuits.tasks import binary as tasks_lib

_log = reporting.get(__name__)


def _paper_first(names) -> list[str]:
  paper = [n for n in task_suite.PAPER_TASKS if n in names]
  return paper + [n for n in names if n not in task_suite.PAPER_TASKS]


def format_table(summary: dict) -> str:
  """Paper tasks first, then the others, each group with its mean; a `*`
  marks a task a bigram model solves; skipped tasks with their reason."""
  results = summary["tasks"]
  rows = [f"{'task':<31} {'loss':>8} {'accuracy':>9} {'pairs':>7} {'n':>6}"]
  paper = [n for n in task_suite.PAPER_TASKS if n in results]
  groups = (("paper tasks", paper),
            ("other tasks", [n for n in results if n not in paper]))
  for title, names in groups:
    for name in names:
      r = results[name]
      gen = task_suite.GENERATORS.get(name)
      mark = "*" if gen and not gen.bigram_proof else ""
      pa = r.get("pair_accuracy", float("nan"))
      rows.append(f"{name + mark:<31} {r['loss']:>8.4f} "
                  f"{100 * r['accuracy']:>8.1f}% {100 * pa:>6.1f}% "
                  f"{r['n']:>6}")
    if names:
      acc = np.mean([results[n]["accuracy"] for n in names])
      loss = np.mean([results[n]["loss"] for n in names])
      rows.append(f"{f'mean of {len(names)} {title}':<31} {loss:>8.4f} "
                  f"{100 * acc:>8.1f}%")
  if paper:
    good = sum(results[n]["accuracy"] >= 0.8 for n in paper)
    rows.append(f"paper tasks at >= 80% accuracy: {good} of {len(paper)}")
    pairs = sum(results[n].get("pair_accuracy", 0) >= 0.8 for n in paper)
    rows.append(f"paper tasks whose pairs move the right way (>= 80% of "
                f"pairs): {pairs} of {len(paper)}")
  if any(not g.bigram_proof for n, g in task_suite.GENERATORS.items()
         if n in results):
    rows.append("* the decisive token is the prompt's last one: a bigram "
                "model solves it")
  for name, reason in summary.get("skipped", {}).items():
    rows.append(f"skipped {name}: {reason}")
  return "\n".join(rows)


def lm_loss(run: runs.Run, n_batches: int) -> float:
  """Mean held-out LM loss of a run over its first n eval batches."""
  info = data.prepare(run.config, run.workdir, reuse=True)
  eval_step = runs.lm_eval_step(run.ctx)
  losses = [eval_step(run.params, sharding.global_batch(b, run.ctx.mesh))
            for b in data.eval_batches(run.config, info, max(1, n_batches))]
  return float(np.mean(jax.device_get(losses)))


def run(config, workdir: str) -> dict:
  """Evaluates WORKDIR's latest checkpoint; writes WORKDIR/eval_summary.json."""
  r = runs.load(workdir, overlay=config)
  lm = lm_loss(r, r.config.train.eval_batches)
  built, skipped = tasks_lib.build_suite(r.config, r.tokenizer, n_train=0)
  results = {}
  for name in tqdm(_paper_first(list(built)), desc="tasks", leave=False):
    results[name] = tasks_lib.evaluate_task(r.params, r.cfg, built[name].test)
  summary = {"lm_loss": lm, "step": r.step, "tasks": results,
             "skipped": skipped, "environment": reporting.environment()}
  if jax.process_index() == 0:
    path = reporting.write_json(layout.Layout(workdir).eval_summary, summary)
    _log.info(f"eval of {workdir} at step {r.step}: held-out LM loss {lm:.4f}\n"
          f"{format_table(summary)}\nwrote {path}")
  return summary

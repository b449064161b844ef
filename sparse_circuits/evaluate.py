"""`--mode=eval`: held-out LM loss and every task's loss and accuracy.

Restores the parameters of WORKDIR's latest checkpoint (`runs.load`): the
model's shape, the data and the tokenizer come from the config stored in that
checkpoint (so they always match the parameters); the task settings
(`tasks.*`) and the number of held-out batches come from the config on the
command line. Writes WORKDIR/eval_summary.json:
  {"lm_loss": float, "step": int, "tasks": {name: {"loss", "accuracy", "n"}}}
"""

import json
import os

import jax
import numpy as np

from sparse_circuits import data
from sparse_circuits import reporting
from sparse_circuits import runs
from sparse_circuits import sharding
from sparse_circuits import tasks as tasks_lib

_log = reporting.get(__name__)


def format_table(summary: dict) -> str:
  rows = [f"{'task':<30} {'loss':>8} {'accuracy':>9} {'n':>6}"]
  for name, r in summary["tasks"].items():
    rows.append(f"{name:<30} {r['loss']:>8.4f} {100 * r['accuracy']:>8.1f}% "
                f"{r['n']:>6}")
  if summary["tasks"]:
    acc = np.mean([r["accuracy"] for r in summary["tasks"].values()])
    loss = np.mean([r["loss"] for r in summary["tasks"].values()])
    rows.append(f"{'mean':<30} {loss:>8.4f} {100 * acc:>8.1f}%")
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
  results = {name: tasks_lib.evaluate_task(r.params, r.cfg, task.test)
             for name, task in r.tasks().items()}
  summary = {"lm_loss": lm, "step": r.step, "tasks": results}
  if jax.process_index() == 0:
    path = os.path.join(workdir, "eval_summary.json")
    with open(path, "w") as f:
      json.dump(summary, f, indent=1)
    _log.info(f"eval of {workdir} at step {r.step}: held-out LM loss {lm:.4f}\n"
          f"{format_table(summary)}\nwrote {path}")
  return summary

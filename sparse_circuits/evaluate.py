"""`--mode=eval`: held-out LM loss and every task's loss and accuracy.

Restores the parameters of WORKDIR's latest checkpoint. The model's shape,
the data and the tokenizer come from the config stored in that checkpoint
(so they always match the parameters); the task settings (`tasks.*`) and the
number of held-out batches come from the config on the command line.
Writes WORKDIR/eval_summary.json:
  {"lm_loss": float, "step": int, "tasks": {name: {"loss", "accuracy", "n"}}}
"""

import json
import os

import jax
import ml_collections
import numpy as np

from sparse_circuits import checkpoints
from sparse_circuits import data
from sparse_circuits import sharding
from sparse_circuits import tasks as tasks_lib
from sparse_circuits import tokenizer as tokenizer_lib
from sparse_circuits import train


def eval_config(config, workdir) -> ml_collections.ConfigDict:
  """The checkpoint's config with this run's `tasks` and `eval_batches`."""
  stored = checkpoints.load_config(workdir)  # CheckpointError if none
  merged = ml_collections.ConfigDict(stored.to_dict())
  with merged.unlocked():
    merged.tasks = ml_collections.ConfigDict(config.tasks.to_dict())
    merged.train.eval_batches = config.train.eval_batches
  return merged


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


def run(config, workdir: str) -> dict:
  """Evaluates WORKDIR's latest checkpoint; writes WORKDIR/eval_summary.json."""
  cfg_all = eval_config(config, workdir)
  setup = train.make_setup(cfg_all)
  params, step = checkpoints.restore_params(workdir, setup.abstract_params)
  info = data.prepare(cfg_all, workdir, reuse=True)
  tok = tokenizer_lib.load(info.tokenizer_dir)

  eval_step = train.make_eval_step(setup)
  n_batches = max(1, cfg_all.train.eval_batches)
  batches = [sharding.global_batch(b, setup.mesh)
             for b in data.eval_batches(cfg_all, info, n_batches)]
  lm_loss = float(np.mean(jax.device_get(
      train.evaluate(eval_step, params, batches))))

  results = {}
  for name, task in tasks_lib.build_all(cfg_all, tok).items():
    results[name] = tasks_lib.evaluate_task(params, setup.cfg, task.test)
  summary = {"lm_loss": lm_loss, "step": int(step), "tasks": results}

  if jax.process_index() == 0:
    path = os.path.join(workdir, "eval_summary.json")
    with open(path, "w") as f:
      json.dump(summary, f, indent=1)
    print(f"eval of {checkpoints.ckpt_dir(workdir)} at step {step}: held-out "
          f"LM loss {lm_loss:.4f}\n{format_table(summary)}\nwrote {path}")
  return summary

"""Cost of the pruning search: seconds per task, and one vmapped program vs a
loop over settings.

  python benchmarks/prune_search.py --workdir=runs/tiny [--task=NAME]
      [--settings=1,4,16] [--steps=20] [--full]

On a trained run (`--mode=train` first), for one task:
- mask training of S settings for --steps steps in one vmapped program vs S
  separate single-setting programs run one after the other, per S in
  --settings (compilation excluded: each program runs once before timing);
- the k search (bisection) of S settings batched vs one setting at a time;
- with --full, the whole default search of `prune.prune_task` (sweep, k
  search, test confirmation, stability seeds, nonsense control, loss-vs-k)
  and the random-init control, compilation included, as `--mode=prune`
  spends it on a task.
Timings on a shared or busy machine mean little: measure on an idle one.
"""

import argparse
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparse_circuits import checkpoints  # pylint: disable=g-import-not-at-top,wrong-import-position
from sparse_circuits import config_lib  # pylint: disable=wrong-import-position
from sparse_circuits.circuits import prune  # pylint: disable=wrong-import-position
from sparse_circuits.circuits import search  # pylint: disable=wrong-import-position
from sparse_circuits.tasks import binary as tasks_lib  # pylint: disable=wrong-import-position


def _load(workdir, task_name):
  if checkpoints.latest_step(workdir) is None:
    raise SystemExit(f"{workdir}: no checkpoint; train first (the README's "
                     "main command, or --mode=train)")
  # This code's prune settings for the run's size, not the stored ones.
  stored = checkpoints.load_config(workdir)
  s = prune.setup(workdir, overlay={"prune": config_lib.base_config(
      stored.get("name", "tiny")).prune.to_dict()})
  name = task_name or s.run.config.prune.tasks[0]
  task = tasks_lib.build_all(s.run.config, s.run.tokenizer, names=[name])[name]
  return s, task


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  jax.block_until_ready(jax.tree.leaves(out))
  return time.perf_counter() - start, out


def scaling(pruner, task, settings, sizes):
  """Seconds of mask training and of the k search: S settings at once vs
  S single-setting runs in a row; one row per size, as each is measured."""
  for s in sizes:
    group = settings[:s]
    run_all = lambda g=group: pruner.train(task.train, g, progress=False)
    run_one = lambda x: pruner.train(task.train, [x], progress=False)
    run_all()  # compile for S
    run_one(group[0])  # compile for 1
    t_vmap, (tau, _, _) = _timed(run_all)
    t_loop = sum(_timed(lambda x=x: run_one(x))[0] for x in group)
    target = pruner.pc.target_loss
    pruner.search(tau, task.train, target)  # compile every chunk shape
    t_search, _ = _timed(lambda: pruner.search(tau, task.train, target))
    t_search_loop = sum(_timed(lambda i=i: pruner.search(
        tau[i:i + 1], task.train, target))[0] for i in range(s))
    yield dict(settings=s, train_vmap_s=t_vmap, train_loop_s=t_loop,
               search_batched_s=t_search, search_loop_s=t_search_loop)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--task", default="")
  ap.add_argument("--settings", default="1,4,16")
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--full", action="store_true")
  args = ap.parse_args(argv)
  s, task = _load(args.workdir, args.task)
  r, config = s.run, s.run.config
  pc = config.prune
  print(f"{task.name} on {args.workdir} (step {r.step}), "
        f"{jax.devices()[0].platform}, {os.cpu_count()} CPUs; default "
        f"search: {pc.sweep_size} settings x {pc.steps} mask steps, "
        f"{pc.stability_seeds} stability seeds, nonsense control "
        f"{pc.nonsense_control}")
  if args.full:
    pruner = s.pruner()
    t_task, res = _timed(lambda: prune.prune_task(pruner, task,
                                                  progress=False))
    rand = prune.random_pruner(r.ctx, config.seed, s.batches, pc, s.sites)
    t_rand, _ = _timed(lambda: prune.random_control(rand, task, res))
    print(f"whole search of one task (compilation included): {t_task:.1f} s "
          f"(sweep and k search {res.search_seconds:.1f} s); random-init "
          f"control {t_rand:.1f} s; circuit {res.k} nodes"
          f"{'' if res.reached else ' (target not reached)'}")
  short = pc.copy_and_resolve_references()
  short.steps = args.steps
  pruner = s.pruner(short)
  sizes = [int(x) for x in args.settings.split(",")]
  settings = search.sweep_settings(_with_size(short, max(sizes)))
  print(f"{'settings':>8} {'train vmapped':>14} {'train loop':>11} "
        f"{'ratio':>6} {'k search batched':>17} {'k search loop':>14}")
  for r in scaling(pruner, task, settings, sizes):
    print(f"{r['settings']:>8} {r['train_vmap_s']:>12.2f} s "
          f"{r['train_loop_s']:>9.2f} s "
          f"{r['train_loop_s'] / r['train_vmap_s']:>6.2f} "
          f"{r['search_batched_s']:>15.2f} s {r['search_loop_s']:>12.2f} s",
          flush=True)
  print(f"(mask training: {args.steps} steps; a task's sweep runs "
        f"{pc.steps})")


def _with_size(pc, n):
  pc = pc.copy_and_resolve_references()
  pc.sweep_size = n
  return pc


if __name__ == "__main__":
  main()

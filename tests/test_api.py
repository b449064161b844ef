"""The Python API (`import sparse_circuits as sc`) on a tiny trained run.

The README's notebook example is executed here verbatim (only the workdir
differs), so the README cannot rot.
"""

import os
import pathlib
import re

import numpy as np
import pytest

import sparse_circuits as sc
from sparse_circuits import errors
from sparse_circuits import model as model_lib
from sparse_circuits import runs

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
  m = re.search(r"<!-- api-example -->\s*```python\n(.*?)```\s*"
                r"<!-- /api-example -->", README.read_text(), re.S)
  assert m, "README.md lost its api-example block"
  return m.group(1)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, tiny_data):
  """A tiny run trained a few steps and pruned on one task, as runs/tiny
  under a temporary directory. The target loss is loose so that the circuit
  keeps only part of the model (its loss then differs from the full
  model's, and the test below can tell whether ablation was reproduced)."""
  from sparse_circuits.circuits import prune  # pylint: disable=g-import-not-at-top
  from sparse_circuits import train  # pylint: disable=g-import-not-at-top
  config, info = tiny_data
  config = config.copy_and_resolve_references()
  c = config
  c.data.tokenizer_dir = info.tokenizer_dir
  c.model.n_layer, c.model.d_model, c.model.d_mlp = 2, 64, 256
  c.model.n_head, c.model.block_size = 4, 64
  c.sparsity.expansion_factor = 1.0
  c.train.num_steps, c.train.batch_size = 12, 8
  c.train.eval_every, c.train.checkpoint_every = 12, 12
  c.train.eval_batches = 1
  c.tasks.n_train, c.tasks.n_test = 16, 8
  c.tasks.names = ("single_double_quote",)
  c.prune.tasks = ("single_double_quote",)
  c.prune.steps, c.prune.batch_size, c.prune.mean_batches = 10, 8, 1
  c.prune.sweep_size, c.prune.k_coef = 2, 1e-2
  c.prune.stability_seeds, c.prune.nonsense_control = 1, False
  c.prune.random_control = False
  c.prune.target_loss = 1.0
  root = tmp_path_factory.mktemp("api")
  workdir = str(root / "runs" / "tiny")
  train.run(c, workdir)
  prune.run(c, workdir)
  return root, workdir, c


@pytest.mark.slow
def test_readme_example_runs_and_reproduces_the_circuit_loss(
    pruned_run, monkeypatch):
  root, _, _ = pruned_run
  monkeypatch.chdir(root)
  ns = {}
  exec(compile(_readme_example(), str(README), "exec"), ns)  # pylint: disable=exec-used
  run, circ = ns["run"], ns["circ"]
  n_total = circ.counts["total_nodes"]
  # Part of the model (possibly all of it) is ablated: the loose target is
  # met by a circuit smaller than the model, whose loss differs from the
  # full model's (checked below), so the ablation itself is tested.
  assert circ.counts["nodes"] < n_total, circ.counts
  # The circuit alone, through the API, gives circuit.json's loss.
  np.testing.assert_allclose(ns["alone"]["loss"],
                             circ.losses["circuit_uncalibrated"], atol=1e-4)
  np.testing.assert_allclose(ns["full"]["loss"], circ.losses["full_model"],
                             atol=1e-4)
  assert abs(ns["alone"]["loss"] - ns["full"]["loss"]) > 1e-3
  # With its stored calibration (scale > 0, fitted on train), circuit.json's
  # calibrated test loss; a calibration of (1, 0) is the uncalibrated one.
  cal = circ.evaluate(calibrated=True)
  assert circ.calibration["scale"] > 0
  np.testing.assert_allclose(cal["loss"], circ.losses["circuit"], atol=1e-4)
  np.testing.assert_allclose(
      circ.evaluate()["loss"], circ.losses["circuit_uncalibrated"], atol=1e-4)
  ident = run.evaluate(circ.task(), circ.apply(),
                       calibration={"scale": 1.0, "shift": 0.0})
  np.testing.assert_allclose(ident["loss"], ns["alone"]["loss"], atol=1e-6)
  # Captures have the model's widths; the intervened logits differ.
  assert ns["cache"]["1.mlp.post_act"].shape == (1, len(ns["ids"]),
                                                 run.cfg.d_mlp)
  assert ns["cache"]["0.attn.q"].shape[-1] == run.cfg.n_head * run.cfg.d_head


@pytest.mark.slow
def test_forward_and_capture_match_the_model(pruned_run):
  _, workdir, _ = pruned_run
  run = sc.load(workdir)
  assert run.step == 12
  text = "def f(x):\n    return x"
  ids = run.tokenize(text)
  assert run.decode(ids) == text
  logits, cache = run(text, capture=["0.resid_in", "final_resid"])
  want, acts = model_lib.forward(run.params, ids[None], run.cfg,
                                 capture=("final_resid",))
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cache["final_resid"], acts["final_resid"],
                             rtol=1e-5, atol=1e-5)
  assert set(cache) == {"0.resid_in", "final_resid"}
  with pytest.raises(ValueError, match="unknown activation site"):
    run(ids, capture=["0.attn.nope"])
  # Ids a gather would clamp, and masks that do not fit a site, are named.
  with pytest.raises(ValueError, match=r"token ids must be in \[0, 2048\)"):
    run(np.array([[5, run.cfg.vocab_size]]))
  width = cache["0.resid_in"].shape[-1]
  with pytest.raises(ValueError, match=rf"\['0.resid_in'\]\['mask'\] has "
                     rf"shape \(3,\).*\[{width}\]"):
    run(ids, interventions={"0.resid_in": {"mask": np.ones(3), "mean": 0.0}})
  kept, _ = run(ids, interventions={"0.resid_in": {"mask": np.ones(width),
                                                   "mean": 0.0}})
  np.testing.assert_allclose(kept, logits, rtol=1e-6, atol=1e-6)  # mask 1: same


@pytest.mark.slow
def test_overlay_changes_analysis_settings_only(pruned_run):
  _, workdir, c = pruned_run
  run = sc.load(workdir, overlay={"tasks": {"n_test": 4}})
  assert run.config.tasks.n_test == 4
  assert runs.model_config(run.config) == runs.model_config(c)
  assert run.evaluate("single_double_quote")["n"] == 4
  with pytest.raises(errors.ConfigError, match="cannot change a trained run"):
    sc.load(workdir, overlay={"model": {"d_model": 8}})
  with pytest.raises(errors.ConfigError,
                     match=r"tasks.n_tset is not a config field \(did you "
                     r"mean tasks.n_test\?\)"):
    sc.load(workdir, overlay={"tasks": {"n_tset": 4}})
  with pytest.raises(errors.ConfigError, match="eval.batches is not a config"):
    sc.load(workdir, overlay={"eval": {"batches": 4}})  # no such section yet
  with pytest.raises(errors.CheckpointError,
                     match=f"no checkpoint at step 12345 in {workdir}"):
    sc.load(workdir, step=12345)
  # A whole command-line config overlays its tasks/prune sections.
  cli = c.copy_and_resolve_references()
  cli.tasks.seed, cli.model.d_model = 7, 999
  merged = runs.overlay_config(run.config, cli)
  assert merged.tasks.seed == 7 and merged.model.d_model == c.model.d_model


@pytest.mark.slow
def test_a_missing_circuit_is_named(pruned_run):
  _, workdir, _ = pruned_run
  run = sc.load(workdir)
  with pytest.raises(FileNotFoundError, match="bracket_counting"):
    run.circuit("bracket_counting")


@pytest.mark.slow
def test_eval_and_prune_programs_never_import_the_optimizer():
  """The prune/eval/report/export programs restore parameters only."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ("import sys\n"
          "from sparse_circuits import evaluate, viz, interop, runs\n"
          "from sparse_circuits.circuits import prune\n"
          "bad = [m for m in ('sparse_circuits.train', 'sparse_circuits.optim')"
          " if m in sys.modules]\n"
          "print('BAD' if bad else 'OK', bad)\n")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                     text=True, cwd=README.parent,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"), check=True)
  assert r.stdout.startswith("OK"), r.stdout + r.stderr


def test_an_older_stored_config_is_upgraded_once_keeping_its_own_values():
  """Fields added since a run was stored come at this version's defaults;
  what the run stored stays, including fields this version no longer has."""
  from sparse_circuits import config_lib  # pylint: disable=g-import-not-at-top
  old = config_lib.base_config("micro").to_dict()
  del old["train"]["microbatches"], old["model"]["remat"], old["bridge"]
  old["model"]["retired_field"] = 7
  new = runs.upgrade_config(old)
  assert new.train.microbatches == 1 and new.model.remat == "none"
  assert new.bridge.kl_paths == config_lib.base_config("tiny").bridge.kl_paths
  assert new.model.d_model == 32 and new.model.retired_field == 7
  assert runs.overlay_config(old, {"prune": {"steps": 5}}).train.microbatches == 1
  config_lib.validate(new)


def test_ci_runs_exactly_the_readmes_test_command():
  ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
  blocks = re.findall(r"```\n(.*?)\n```", README.read_text(), re.S)
  assert ci in blocks, f".ci/run's command is not one of the README's: {ci}"
  assert "-m ''" in ci and "ruff check" in ci and "lint-imports" in ci

"""--mode=compare: the statistics on known numbers, and the smoke compare
killed in the middle and started again."""

import importlib.util
import json
import math
import os
import pathlib

import jax
import numpy as np
import pytest

from sparse_circuits.experiments import compare
from sparse_circuits.experiments import decomposition
from sparse_circuits.experiments import frontier

ROOT = pathlib.Path(__file__).resolve().parents[1]


def compare_config(arg):
  spec = importlib.util.spec_from_file_location(
      "compare_config", ROOT / "configs" / "compare.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


# ------------------------------------------------------------ statistics


def test_geomean_counts_zero_as_one():
  assert frontier.geomean([1, 100]) == pytest.approx(10)
  assert frontier.geomean([0, 100]) == pytest.approx(10)
  assert frontier.geomean([4, 4, 4]) == pytest.approx(4)


def test_interpolation_is_linear_in_log_and_flags_extrapolation():
  # Unsorted on purpose: the points are ordered by x inside.
  xs, ys = [3.0, 1.0, 2.0], [1000.0, 10.0, 100.0]
  y, extra, used = frontier.interpolate_log(xs, ys, 1.5)
  assert y == pytest.approx(math.sqrt(10 * 100)) and not extra
  assert sorted(used) == [1, 2]
  y, extra, used = frontier.interpolate_log(xs, ys, 2.0)
  assert y == pytest.approx(100) and not extra
  y, extra, used = frontier.interpolate_log(xs, ys, 3.5)  # beyond: last two
  assert y == pytest.approx(10 ** 3.5) and extra and sorted(used) == [0, 2]
  y, extra, _ = frontier.interpolate_log(xs, ys, 0.0)
  assert y == pytest.approx(1.0) and extra
  with pytest.raises(ValueError, match="two points"):
    frontier.interpolate_log([1.0], [2.0], 1.0)


def test_matched_ratio_and_headline():
  # Dense frontier: 1000 edges at loss 2, 10 at loss 3 (so 100 at 2.5).
  losses = [2.0, 3.0, 2.5, 3.5]
  fams = ["dense", "dense", "sparse", "sparse"]
  rows, head = frontier.matched_ratios(losses, fams, [1000, 10, 10, 2])
  assert [r["model"] for r in rows] == [2, 3]
  assert rows[0]["ratio"] == pytest.approx(10)
  assert not rows[0]["extrapolated"] and rows[1]["extrapolated"]
  assert rows[1]["dense_edges_at_loss"] == pytest.approx(1.0)
  assert rows[1]["ratio"] == pytest.approx(0.5)  # a ratio below 1 stays
  # The headline uses the interpolated sparse models only.
  assert head["ratio"] == pytest.approx(10) and not head["extrapolated"]
  _, head = frontier.matched_ratios(losses[:2] + [3.5], fams[:3], [1000, 10, 2])
  assert head["ratio"] == pytest.approx(0.5) and head["extrapolated"]


def test_bootstrap_over_tasks():
  same = np.full((2, 5), 7.0)
  lo, hi = frontier.bootstrap(same, lambda s: [frontier.geomean(r) for r in s],
                             100, seed=0)
  np.testing.assert_allclose(lo, 7.0)
  np.testing.assert_allclose(hi, 7.0)
  v = np.array([[1.0, 10.0, 100.0, 1000.0]])
  stat = lambda s: [frontier.geomean(s[0])]  # pylint: disable=unnecessary-lambda-assignment
  lo, hi = frontier.bootstrap(v, stat, 400, seed=3)
  assert 1.0 <= lo[0] < frontier.geomean(v[0]) < hi[0] <= 1000.0
  lo2, hi2 = frontier.bootstrap(v, stat, 400, seed=3)
  assert (lo, hi) == (lo2, hi2)  # seeded
  # Tasks are resampled jointly: a model that is always 10x another keeps
  # an exact ratio of 10 in every resample.
  pair = np.array([[1.0, 5.0, 50.0], [10.0, 50.0, 500.0]])
  lo, hi = frontier.bootstrap(
      pair, lambda s: [frontier.geomean(s[1]) / frontier.geomean(s[0])], 200, 0)
  np.testing.assert_allclose([lo[0], hi[0]], 10.0)


def test_weight_edges_leave_out_residual_connections():
  edges = [{"kind": "weight"}, {"kind": "residual"}, {"kind": "weight"}]
  assert compare.weight_edges({"schema_version": 1, "edges": edges,
                               "counts": {"edges": 3}}) == 2
  assert compare.weight_edges({"schema_version": 2, "edges": edges,
                               "counts": {"edges": 2}}) == 2


def _fake(ms_losses, task_acc_loss):
  """Models and evals for the selection rules."""
  ms = [compare.Model(n, f, None, "") for n, f in ms_losses]
  evals = {n: {"lm_loss": 3.0, "tasks": {
      t: {"accuracy": a[i], "pair_accuracy": a[i], "loss": l[i]}
      for t, (a, l) in task_acc_loss.items()}}
           for i, (n, _) in enumerate(ms_losses)}
  return ms, evals


def test_task_selection_and_target_rules():
  cc = compare_config("default").compare
  names = [("s1", "sparse"), ("s2", "sparse"), ("d1", "dense")]
  ms, evals = _fake(names, {
      "a": ([0.9, 0.95, 0.85], [0.3, 0.2, 0.4]),
      "b": ([0.9, 0.7, 0.99], [0.1, 0.5, 0.1]),
      "c": ([0.99, 0.99, 0.99], [0.05, 0.1, 0.08])})
  evals["s2"]["skipped"] = {"z": "candidate ' @' is no token"}
  chosen, status = compare._select_tasks(ms, evals, cc)  # pylint: disable=protected-access
  assert chosen == ["a", "c"]
  assert "candidate" in status["z"]["reason"]
  assert status["b"]["status"] == "skipped" and "s2 (0.70)" in status["b"][
      "reason"]
  pc = compare_config("default").prune
  # relative: a factor times the worst model's full-model loss, never
  # below the target.
  cc.target_factor = 1.5
  assert compare._target(ms, evals, "a", pc, cc) == pytest.approx(0.6)  # pylint: disable=protected-access
  assert compare._target(ms, evals, "c", pc, cc) == pytest.approx(  # pylint: disable=protected-access
      pc.target_loss)
  cc.target_rule = "absolute"
  assert compare._target(ms, evals, "a", pc, cc) == pc.target_loss  # pylint: disable=protected-access
  cc.max_tasks = 1
  chosen, status = compare._select_tasks(ms, evals, cc)  # pylint: disable=protected-access
  assert chosen == ["a"] and "max_tasks" in status["c"]["reason"]
  # Held-out pairs decide (the README's measure), unless told otherwise.
  assert cc.select_by == "pair_accuracy"
  evals["d1"]["tasks"]["a"]["pair_accuracy"] = 0.5
  chosen, status = compare._select_tasks(ms, evals, cc)  # pylint: disable=protected-access
  assert chosen == ["c"] and "pair_accuracy below" in status["a"]["reason"]
  cc.select_by = "accuracy"
  chosen, _ = compare._select_tasks(ms, evals, cc)  # pylint: disable=protected-access
  assert chosen == ["a"]
  # A task the bigram table alone solves has no circuit worth comparing.
  ms, evals = _fake(names, {"else_elif": ([0.99] * 3, [0.05] * 3),
                            "var_if": ([0.99] * 3, [0.05] * 3)})
  chosen, status = compare._select_tasks(ms, evals, cc)  # pylint: disable=protected-access
  assert chosen == ["var_if"] and "bigram" in status["else_elif"]["reason"]


def test_summary_drops_a_task_whose_target_is_missed():
  config = compare_config("old")
  specs = config.compare.models
  ms = [compare.Model(n, specs[n].family,
                      compare.model_config(config, specs[n]), "")
        for n in ("dense_64", "dense_128", "sparse_128_keep4")]
  losses = {"dense_64": 3.0, "dense_128": 2.0, "sparse_128_keep4": 2.5}
  edges = {"dense_64": [10, 10, 10], "dense_128": [1000, 1000, 1000],
           "sparse_128_keep4": [10, 10, 5]}
  tasks = ["a", "b", "c"]
  evals = {n: {"lm_loss": losses[n], "tasks": {
      t: {"accuracy": 0.9, "loss": 0.2} for t in tasks}} for n in losses}
  circuits = {n: {t: {"schema_version": 2, "target_reached": not (
      n == "dense_64" and t == "c"), "counts": {"edges": edges[n][i],
                                                "nodes": 2 * edges[n][i],
                                                "pairs": 4 * edges[n][i]},
                       "losses": {"circuit": 0.2, "full_model": 0.2}}
                  for i, t in enumerate(tasks)} for n in losses}
  status = {t: {"status": "compared"} for t in tasks}
  l0s = {n: {"l0": 1, "matrix_entries": 2} for n in losses}
  s = compare.summarize(ms, evals, l0s, circuits, status,
                        {t: 0.2 for t in tasks}, config.compare)
  assert s["compared_tasks"] == ["a", "b"]
  assert s["tasks"]["c"]["status"] == "dropped"
  assert "dense_64" in s["tasks"]["c"]["reason"]
  sp = s["models"]["sparse_128_keep4"]
  assert sp["geomean_edges"] == pytest.approx(10)  # c (5 edges) left out
  assert sp["geomean_nodes"] == pytest.approx(20)
  (m,) = s["matched"]
  assert m["dense_edges_at_loss"] == pytest.approx(100)  # sqrt(10 * 1000)
  assert m["ratio"] == pytest.approx(10) and not m["extrapolated"]
  np.testing.assert_allclose(m["ratio_ci"], [10, 10])  # same on every task
  assert s["headline"]["ratio"] == pytest.approx(10)
  assert "10.00x" in compare.format_table(s)
  # The decomposition's edge ratio is the headline's.
  d = s["decomposition"]["models"]["sparse_128_keep4"]["geomean"]
  assert d["edges"]["ratio"] == pytest.approx(10)
  assert d["nodes"]["ratio"] == pytest.approx(10)
  assert d["density"]["ratio"] == pytest.approx(1)


def _circuit(nodes, by_kind, pairs):
  """A hand-built circuit.json's counts."""
  return {"schema_version": 2, "counts": {
      "nodes": nodes, "edges": sum(by_kind.values()),
      "edges_by_kind": by_kind, "pairs": pairs}}


def test_decomposition_takes_the_ratio_apart():
  """Hand-built circuits with known nodes, pairs and edges. Dense models
  at losses 2 and 3, the sparse one at 2.5 (halfway: geometric means of the
  two dense values); two tasks."""
  circuits = {
      # 100 nodes, 5000 pairs, 1000 edges (800 hidden, 200 io)
      "d2": [_circuit(100, {"weight": 800, "embedding": 150,
                            "unembedding": 50}, 5000)] * 2,
      # 16 nodes, 400 pairs, 100 edges (90 hidden, 10 io)
      "d3": [_circuit(16, {"weight": 90, "unembedding": 10}, 400)] * 2,
      # task a: 10 nodes, 50 pairs, 10 edges; task b: 40 nodes, 200 pairs,
      # 10 edges (0 io edges: counted as 1)
      "s": [_circuit(10, {"weight": 8, "embedding": 2}, 50),
            _circuit(40, {"weight": 10}, 200)]}
  q = decomposition.quantities(circuits["s"][0])
  assert q == {"nodes": 10, "pairs_per_node": 5, "density": 0.2,
               "edges": 10, "edges_per_node": 1, "hidden_edges": 8,
               "io_edges": 2}
  assert decomposition.quantities(circuits["s"][1])["io_edges"] == 1
  names, fams, losses = ["d2", "d3", "s"], ["dense", "dense", "sparse"], [
      2.0, 3.0, 2.5]
  per_task = {n: {t: decomposition.quantities(c[i])
                  for i, t in enumerate("ab")} for n, c in circuits.items()}
  dec = decomposition.decompose(names, fams, losses, per_task, ["a", "b"],
                                ["s"])
  row = dec["models"]["s"]
  a = row["tasks"]["a"]
  assert a["nodes"]["dense_at_loss"] == pytest.approx(40)  # sqrt(100 * 16)
  assert a["nodes"]["ratio"] == pytest.approx(4)
  assert a["edges"]["dense_at_loss"] == pytest.approx(math.sqrt(1e5))
  assert a["edges"]["ratio"] == pytest.approx(math.sqrt(1e5) / 10)
  # pairs per node: dense 50 and 25 -> sqrt(1250); sparse 5
  assert a["pairs_per_node"]["ratio"] == pytest.approx(math.sqrt(1250) / 5)
  # density: dense 0.2 and 0.25 -> sqrt(0.05); sparse 0.2
  assert a["density"]["ratio"] == pytest.approx(math.sqrt(0.05) / 0.2)
  assert a["hidden_edges"]["ratio"] == pytest.approx(math.sqrt(800 * 90) / 8)
  assert a["io_edges"]["ratio"] == pytest.approx(math.sqrt(200 * 10) / 2)
  # Geometric means over the two tasks: sparse nodes sqrt(10 * 40) = 20.
  g = row["geomean"]
  assert g["nodes"]["sparse"] == pytest.approx(20)
  assert g["nodes"]["ratio"] == pytest.approx(2)
  assert g["edges"]["ratio"] == pytest.approx(math.sqrt(1e5) / 10)
  for block in (a, row["tasks"]["b"], g):  # the product is exact
    assert block["edges"]["ratio"] == pytest.approx(
        block["nodes"]["ratio"] * block["pairs_per_node"]["ratio"]
        * block["density"]["ratio"])
    assert block["edges_per_node"]["ratio"] == pytest.approx(
        block["pairs_per_node"]["ratio"] * block["density"]["ratio"])
  assert dec["headline"]["edges"] == pytest.approx(g["edges"]["ratio"])


def test_stage_seconds_count_an_lr_trial_once(tmp_path):
  # An LR trial's stage (lr/M/xK) times its training (train/M/xK) as well.
  log = compare.StageLog(str(tmp_path / "stages.json"))
  for key, seconds in (("train/d/x0.5", 10.0), ("lr/d/x0.5", 12.5),
                       ("train/d", 100.0), ("prune/d/t", 5.25)):
    log.record(key, "fp", seconds)
  assert log.total_seconds() == 117.75
  assert compare.StageLog(log.path).total_seconds() == 117.75  # re-read


def test_config_errors_name_the_field():
  c = compare_config("smoke")
  del c.compare.models["dense_16"]
  with pytest.raises(ValueError, match="two dense models"):
    compare.models(c, "/tmp/x")
  c = compare_config("smoke")
  c.compare.models.sparse_32_keep8.pfrac = 1e-4
  with pytest.raises(ValueError, match="compare.models.sparse_32_keep8"):
    compare.models(c, "/tmp/x")
  c = compare_config("smoke")
  del c.compare.models.sparse_32_keep4["pfrac"]
  with pytest.raises(ValueError, match="sparse_32_keep4.pfrac: missing"):
    compare.models(c, "/tmp/x")
  c = compare_config("smoke")
  c.compare.target_rule = "median"
  with pytest.raises(ValueError, match="target_rule"):
    compare.models(c, "/tmp/x")
  for field, value in (("ablations", ("mean", "resample")),
                       ("ablations", ()), ("select_by", "loss"),
                       ("lr_multipliers", (1.0, 0.0))):
    c = compare_config("smoke")
    c.compare[field] = value
    with pytest.raises(ValueError, match=f"compare.{field}"):
      compare.models(c, "/tmp/x")


def _plan(c):
  from sparse_circuits import model as model_lib  # pylint: disable=g-import-not-at-top
  from sparse_circuits import sparsity  # pylint: disable=g-import-not-at-top
  cfg = model_lib.ModelConfig.from_config(c.model)
  s = c.sparsity
  sched = sparsity.Schedule(1, s.pfrac if s.enabled else s.expansion_factor
                            ** 2, s.expansion_factor)
  return sparsity.make_plan(model_lib.abstract_params(cfg), sched)


def hidden_nonzeros(c):
  return sum(m.k_final for m in _plan(c).matrices
             if m.kind == "hidden" and "wpe" not in m.path)


def test_default_family_is_the_papers_regime_and_validates():
  """Sparse models wider at about the same hidden nonzeros (hidden L0 1/4,
  1/16, 1/36, embeddings by the pfrac rule), min_per_neuron with headroom,
  dense 16..128; the LR rule, both ablations, held-out pairs, 4 tasks."""
  config = compare_config("default")
  ms = {m.name: m for m in compare.models(config, "/tmp/x")}
  assert sorted(n for n in ms if n.startswith("dense")) == [
      "dense_128", "dense_16", "dense_32", "dense_64"]
  want = {"sparse_128_l4": (128, 4), "sparse_256_l16": (256, 16),
          "sparse_384_l36": (384, 36)}
  nz = []
  for name, (d, inv_l0) in want.items():
    c = ms[name].config
    assert c.model.d_model == d
    ef = c.sparsity.expansion_factor
    assert c.sparsity.pfrac / ef ** 2 == pytest.approx(1 / inv_l0)
    nz.append(hidden_nonzeros(c))
    for m in _plan(c).matrices:
      if m.protect_axis is not None:  # >= 2.5x min_per_neuron per neuron
        n_vec = m.shape[1 - m.protect_axis]
        assert m.k_final >= 2.5 * c.sparsity.min_per_neuron * n_vec, (
            name, m.path)
  assert max(nz) / min(nz) < 1.1  # about the same nonzeros
  cc = config.compare
  assert cc.max_tasks == 4 and cc.select_by == "pair_accuracy"
  assert tuple(cc.ablations) == ("mean", "zero")
  assert tuple(cc.lr_multipliers) == (0.5, 1.0, 2.0) and cc.lr_steps == 100
  old = compare_config("old")  # the family measured first, still there
  assert set(old.compare.models) == {"sparse_128_keep4", "sparse_128_keep8",
                                     "dense_32", "dense_64", "dense_128"}
  compare.models(old, "/tmp/x")


def test_h200_variant_is_the_papers_regime_and_validates():
  """The device variant (not runnable here): every model's config validates
  and the family is accepted; the sparse models are wider than dense_64 at
  about its hidden nonzeros, hidden L0 reaches 1/64, tens of millions of
  tokens per model."""
  config = compare_config("h200")
  ms = {m.name: m for m in compare.models(config, "/tmp/x")}
  dense = hidden_nonzeros(ms["dense_64"].config)
  l0s = []
  for name in ("sparse_256_l16", "sparse_512_l64"):
    c = ms[name].config
    assert c.model.d_model > ms["dense_64"].config.model.d_model
    assert hidden_nonzeros(c) == pytest.approx(dense, rel=0.01), name
    l0s.append(c.sparsity.pfrac / c.sparsity.expansion_factor ** 2)
  assert min(l0s) <= 1 / 64
  t = config.train
  assert t.num_steps * t.batch_size * config.model.block_size >= 20e6


# --------------------------------------------------------------- smoke


class _Killed(RuntimeError):
  pass


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, tiny_data):
  """The smoke compare, killed after its second circuit, then run again
  with every library mode counted."""
  from sparse_circuits import evaluate  # pylint: disable=g-import-not-at-top
  from sparse_circuits.circuits import prune  # pylint: disable=g-import-not-at-top
  from sparse_circuits import train  # pylint: disable=g-import-not-at-top
  _, info = tiny_data
  config = compare_config("smoke")
  config.data.tokenizer_dir = info.tokenizer_dir  # the session's (same corpus)
  workdir = str(tmp_path_factory.mktemp("compare"))
  real = {"train": train.run, "eval": evaluate.run, "prune": prune.run}
  calls = {k: [] for k in real}

  def counted(kind, kill_after=None):
    def fn(c, wd):
      if kill_after is not None and len(calls[kind]) == kill_after:
        raise _Killed("killed")
      calls[kind].append((os.path.relpath(wd, workdir),
                          tuple(c.prune.tasks)))
      return real[kind](c, wd)
    return fn

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train, "run", counted("train"))
    mp.setattr(evaluate, "run", counted("eval"))
    mp.setattr(prune, "run", counted("prune", kill_after=2))
    with pytest.raises(_Killed):
      compare.run(config, workdir)
  first = {k: list(v) for k, v in calls.items()}
  done = [os.path.join(workdir, m, "circuits", t[0], "circuit.json")
          for m, t in first["prune"]]
  mtimes = {p: os.stat(p).st_mtime_ns for p in done}
  calls = {k: [] for k in real}
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train, "run", counted("train"))
    mp.setattr(evaluate, "run", counted("eval"))
    mp.setattr(prune, "run", counted("prune"))
    summary = compare.run(config, workdir)
  return config, workdir, summary, first, calls, mtimes


@pytest.mark.slow
def test_killed_compare_resumes_without_redoing_stages(smoke):
  config, workdir, _, first, again, mtimes = smoke
  cc = config.compare
  n_models, n_tasks = len(cc.models), len(config.tasks.names)
  n_lr, n_ab = len(cc.lr_multipliers), len(cc.ablations)
  assert n_lr == n_ab == 2  # the smoke compare exercises both
  # Each model: its LR trials (WORKDIR/lr/<model>/x<m>), then its run.
  assert len(first["train"]) == n_models * (1 + n_lr)
  assert sum(w.startswith("lr" + os.sep) for w, _ in first["train"]) == (
      n_models * n_lr)
  assert len(first["eval"]) == n_models
  assert len(first["prune"]) == 2
  # Started again: no model trained (LR trials included) or evaluated
  # again, only the missing circuits pruned (both ablations), and the
  # finished ones untouched on disk.
  assert again["train"] == [] and again["eval"] == []
  assert len(again["prune"]) == n_models * n_tasks * n_ab - 2
  assert not set(again["prune"]) & set(first["prune"])
  for p, t in mtimes.items():
    assert os.stat(p).st_mtime_ns == t, p
  stages = json.load(open(os.path.join(workdir, "compare", "stages.json")))
  assert sum(k.startswith("prune/") for k in stages) == (
      n_models * n_tasks * n_ab)
  assert sum(k.startswith("lr/") for k in stages) == n_models * n_lr
  # A model dir holding other settings is refused, not silently reused.
  bad = config.copy_and_resolve_references()
  bad.compare.models.dense_16.d_model = 48
  with pytest.raises(ValueError, match="model.d_model"):
    compare.run(bad, workdir)


@pytest.mark.slow
def test_smoke_summary_and_page(smoke, tiny_data):
  from sparse_circuits import runs  # pylint: disable=g-import-not-at-top
  config, workdir, summary, _, _, _ = smoke
  on_disk = json.load(open(os.path.join(workdir, "compare", "summary.json")))
  assert on_disk["compared_tasks"] == list(config.tasks.names)
  assert set(on_disk["models"]) == set(config.compare.models)
  assert on_disk["settings"]["tasks"]["seed"] == config.tasks.seed
  assert on_disk["environment"]["packages"]["jax"] == jax.__version__
  _, info = tiny_data
  for name, m in on_disk["models"].items():
    wd = os.path.join(workdir, name)
    assert m["lm_loss"] == json.load(open(os.path.join(
        wd, "eval_summary.json")))["lm_loss"]
    manifest = json.load(open(os.path.join(wd, "data", "manifest.json")))
    assert manifest["tokenizer_dir"] == os.path.abspath(info.tokenizer_dir)
    # Edges and their geometric mean as read from each circuit.json.
    edges = []
    for t in on_disk["compared_tasks"]:
      doc = json.load(open(os.path.join(wd, "circuits", t, "circuit.json")))
      assert m["tasks"][t]["edges"] == compare.weight_edges(doc)
      assert m["tasks"][t]["nodes"] == doc["counts"]["nodes"]
      assert os.path.exists(os.path.join(workdir, "compare",
                                         m["tasks"][t]["viewer"]))
      edges.append(compare.weight_edges(doc))
    assert m["geomean_edges"] == pytest.approx(frontier.geomean(edges))
    # L0: a sparse model holds exactly its final k per matrix.
    if m["family"] == "sparse":
      mc = compare.model_config(config, config.compare.models[name])
      ctx = runs.context(mc)
      assert m["l0"] == sum(p.k_final for p in ctx.plan.matrices)
      assert m["l0"] < 0.5 * m["matrix_entries"]
    else:
      assert m["l0"] > 0.9 * m["matrix_entries"]
    # The LR rule: the best held-out loss of the trials, recorded.
    lr = m["lr"]
    losses = [t["lm_loss"] for t in lr["trials"]]
    assert len(losses) == 2 and lr["chosen"] == (
        pytest.approx(lr["trials"][int(np.argmin(losses))]["lr"]))
    assert lr["recipe"] == config.opt.lr
    # Both ablations' circuits, each saying which.
    for ablation, sub in (("mean", ""), ("zero", "ablation_zero")):
      for t in on_disk["compared_tasks"]:
        doc = json.load(open(os.path.join(wd, sub, "circuits", t,
                                          "circuit.json")))
        assert doc["ablation"] == ablation
        assert doc["counts"]["pairs"] >= doc["counts"]["edges"]
  assert on_disk["ablation"] == "mean"
  assert set(on_disk["by_ablation"]) == {"mean", "zero"}
  assert on_disk["by_ablation"]["mean"]["headline"] == on_disk["headline"]
  dec = on_disk["decomposition"]
  assert set(dec["models"]) == {n for n, m in on_disk["models"].items()
                                if m["family"] == "sparse"}
  for r in on_disk["matched"]:
    assert dec["models"][r["sparse"]]["geomean"]["edges"]["ratio"] == (
        pytest.approx(r["ratio"]))
  h = on_disk["headline"]
  assert h["n_tasks"] == 2 and h["ratio"] > 0
  assert len(on_disk["matched"]) == 2
  assert summary["headline"]["ratio"] == pytest.approx(h["ratio"])
  page = open(os.path.join(workdir, "compare", "index.html")).read()
  assert page.count("<svg") == 2  # the frontier and the per-task bars
  assert "geometric-mean circuit edges" in page
  assert "The ratio taken apart" in page
  assert "<script" not in page and 'src="http' not in page  # self-contained
  assert os.path.getsize(os.path.join(workdir, "compare", "frontier.png")) > 0
  text = compare.format_table(on_disk)
  assert "headline" in text and "dense_32" in text

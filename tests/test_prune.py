"""Pruning: a hand-built model whose task is computed by three known nodes."""

import dataclasses
import json
import logging
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sparse_circuits.circuits import document as circuit_lib
from sparse_circuits.circuits import controls
from sparse_circuits import model as M
from sparse_circuits import sites as sites_lib
from sparse_circuits.circuits import prune as P
from sparse_circuits.tasks import scoring
from sparse_circuits.circuits import search as S

A, B, T1, T2 = 1, 2, 5, 6  # decisive tokens, candidate tokens
CFG = M.ModelConfig(n_layer=1, d_model=8, n_head=1, d_head=4, d_mlp=8,
                    block_size=8, vocab_size=16, afrac=0.0, pos_emb=False)
CIRCUIT = {"0.mlp.act_in:0", "0.mlp.post_act:0", "0.mlp.resid_delta:1"}


def hand_built_params():
  """Channel 0 of the embedding says A (+1) or B (-1); neuron 0 reads it
  (mlp.act_in:0 -> mlp.post_act:0) and writes channel 1
  (mlp.resid_delta:1), which the unembedding turns into T1 vs T2. Every
  other weight is zero, filler tokens live on channel 3."""
  p = jax.tree.map(np.asarray, M.init_params(CFG, 0))
  p = jax.tree.map(lambda x: np.zeros_like(x), p)
  for ln in ("ln_1", "ln_2"):
    p["h_0"][ln]["weight"][:] = 1.0
  p["ln_f"]["weight"][:] = 1.0
  wte = p["wte"]["embedding"]
  wte[A, 0], wte[B, 0] = 1.0, -1.0
  wte[7:, 3] = 1.0
  p["h_0"]["mlp"]["c_fc"]["kernel"][0, 0] = 1.0
  p["h_0"]["mlp"]["c_proj"]["kernel"][0, 1] = 1.0
  p["h_0"]["mlp"]["c_proj"]["bias"][1] = -1.4
  p["lm_head"]["kernel"][1, T1] = 0.4
  p["lm_head"]["kernel"][1, T2] = -0.4
  return jax.tree.map(jnp.asarray, p)


def task_data(n_pairs=32, seed=0):
  rng = np.random.default_rng(seed)
  rows, target, alt = [], [], []
  for _ in range(n_pairs):
    filler = list(rng.integers(7, 16, 5))
    for tok, t, a in ((A, T1, T2), (B, T2, T1)):
      rows.append(filler + [tok])
      target.append(t)
      alt.append(a)
  tokens = np.asarray(rows, np.int32)
  return types.SimpleNamespace(  # unpadded: every prompt ends at the last column
      tokens=tokens, last=np.full(len(rows), tokens.shape[1] - 1, np.int32),
      target=np.asarray(target, np.int32),
      alternative=np.asarray(alt, np.int32))


def pretraining_batches(seed=1):
  rng = np.random.default_rng(seed)
  return [np.concatenate([rng.integers(7, 16, (16, 6)),
                          rng.choice([A, B], (16, 1)),
                          rng.integers(7, 16, (16, 2))], 1).astype(np.int32)]


def prune_config(**kw):
  pc = ml_collections.ConfigDict(dict(
      target_loss=0.15, steps=200, batch_size=16, weight_decay=1e-3,
      b2=0.95, clip=1.0, init_std=0.01, calibrate=True, seed=0,
      k_coef=1e-2, lr=3e-3, temperature=0.1, init_mean=0.1,
      sweep_size=1, sweep_seed=0, sweep_k_coef=(1e-2,), sweep_lr=(3e-3,),
      sweep_temperature=(0.1,), sweep_init_mean=(0.1,), stability_seeds=1,
      nonsense_control=False, nonsense_ratio=0.5, ablation="mean"))
  pc.update(kw)
  return pc


def _pruner(params=None, **kw):
  params = hand_built_params() if params is None else params
  sites = sites_lib.node_sites(CFG)
  means = P.compute_means(params, CFG, pretraining_batches(), sites)
  return S.Pruner(params, CFG, means, sites, prune_config(**kw))


def _flat(pruner, node_ids):
  return pruner.index.flat(node_ids)


def _hand_task():
  return types.SimpleNamespace(name="hand", description="", train=task_data(),
                               test=task_data(8, 1))


def test_hand_built_model_solves_its_task_and_needs_each_node():
  pruner, data = _pruner(), task_data()
  everything = np.ones(pruner.n_nodes, bool)
  minus = []
  for node in CIRCUIT:
    m = everything.copy()
    m[_flat(pruner, [node])] = False
    minus.append(m)
  sc = pruner.scores(np.stack([everything] + minus), data, data)
  assert sc.train[0] < 0.15 and sc.test_raw[0] < 0.15
  assert np.all(sc.train[1:] > 0.6), sc.train


@pytest.mark.slow
def test_pruning_recovers_exactly_the_known_circuit_stably():
  pruner = _pruner(stability_seeds=3, nonsense_control=True)
  res = P.prune_task(pruner, _hand_task(), progress=False)
  kept = {sites_lib.node_id(s, int(i)) for s, m in res.keep.items()
          for i in np.nonzero(m)[0]}
  assert kept == CIRCUIT
  assert res.reached and res.losses["circuit"] <= 0.15
  assert res.target_reached == {"train": True, "test_calibrated": True,
                                   "test_uncalibrated": True}
  assert res.calibration["scale"] > 0
  assert res.losses["circuit_ablated"] > 0.6
  st = res.stability
  assert st["nodes"] == [3, 3, 3] and st["mean_jaccard"] == 1.0
  assert st["n_in_every_seed"] == 3 and len(set(st["seeds"])) == 3
  assert set(st["in_every_seed"]) == CIRCUIT
  # Three nodes cannot memorise labels drawn by a coin: the nonsense task
  # stays far from the target and the real circuit is not flagged.
  ns = res.nonsense_control
  assert not ns["flag"] and min(ns["test_loss"]) > 0.5
  assert min(ns["train_loss_at_circuit_size"]) > 0.5
  edges = circuit_lib.edges(pruner.params, CFG, res.keep,
                            {"embed": [A, B], "logit": [T1, T2]})
  got = {(e["source"], e["target"], e["kind"]) for e in edges}
  assert got == {
      ("0.mlp.act_in:0", "0.mlp.post_act:0", "weight"),
      ("0.mlp.post_act:0", "0.mlp.resid_delta:1", "weight"),
      (f"embed:{A}", "0.mlp.act_in:0", "embedding"),
      (f"embed:{B}", "0.mlp.act_in:0", "embedding"),
      ("0.mlp.resid_delta:1", f"logit:{T1}", "unembedding"),
      ("0.mlp.resid_delta:1", f"logit:{T2}", "unembedding")}
  assert circuit_lib.edge_counts(edges)["edges"] == 6
  assert circuit_lib.io_tokens(_hand_task()) == {"embed": [A, B],
                                                 "logit": [T1, T2]}


@pytest.mark.slow
def test_a_circuit_predicting_the_reversed_candidates_never_reaches_target():
  """With the unembedding negated the model answers every prompt wrongly
  and confidently. A calibration free to flip the sign (the old one) made
  that a 'sufficient' circuit; a positive scale cannot."""
  params = jax.tree.map(lambda x: x, hand_built_params())
  params["lm_head"]["kernel"] = -params["lm_head"]["kernel"]
  params["h_0"]["mlp"]["c_proj"]["bias"] = (
      -params["h_0"]["mlp"]["c_proj"]["bias"])
  pruner = _pruner(params, sweep_size=4, sweep_k_coef=(1e-3, 1e-1),
                   sweep_lr=(3e-3, 3e-2))
  full = pruner.scores(np.ones((1, pruner.n_nodes), bool), task_data(),
                       task_data(8, 1))
  assert full.test_raw[0] > 1.0  # confidently wrong
  assert full.train[0] >= np.log(2) - 1e-3  # calibration cannot undo it
  res = P.prune_task(pruner, _hand_task(), progress=False)
  assert not res.reached
  assert not any(res.target_reached.values())
  assert not any(s["reached_train"] or s["reached_test"]
                 for s in res.sweep)
  assert res.losses["circuit"] > 0.5


def test_calibration_is_fitted_on_train_and_keeps_the_sign():
  rng = np.random.default_rng(0)
  d = rng.normal(2.0, 1.0, (3, 64)).astype(np.float32)
  d[1] = -d[1]  # reversed
  sign = np.where(rng.random((3, 64)) < 0.5, 1.0, -1.0).astype(np.float32)
  ab = np.asarray(S.fit_calibration(d, sign))
  assert np.all(ab[:, 0] > 0)
  cal = S.bce(d, ab, sign)
  assert cal[0] < S.bce(d)[0]  # a sharper scale helps a right circuit
  assert cal[1] >= np.log(2) - 0.02  # nothing helps a reversed one


def test_straight_through_gradient_is_the_sigmoid_derivative():
  tau = jnp.linspace(-1, 1, 11)
  for t in (0.05, 0.1, 0.5):
    g = jax.grad(lambda x: jnp.sum(scoring.hard_step(x, jnp.float32(t))))(tau)
    s = jax.nn.sigmoid(tau / t)
    np.testing.assert_allclose(g, s * (1 - s) / t, rtol=1e-6)
    np.testing.assert_array_equal(scoring.hard_step(tau, t), (tau > 0) * 1.0)


def _random_model():
  cfg = dataclasses.replace(CFG, d_model=16, n_head=2, d_head=8, d_mlp=32,
                            pos_emb=True, afrac=0.25)
  p = M.init_params(cfg, 3)
  leaves, tree = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  p = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                for x, k in zip(leaves, keys)])
  return p, cfg


@pytest.mark.slow
def test_all_ones_masks_reproduce_the_unpruned_logits():
  params, cfg = _random_model()
  sites = sites_lib.node_sites(cfg)
  toks = jnp.asarray(task_data().tokens)
  means = {s.name: jnp.full((s.width,), 3.0) for s in sites}
  ones = {s.name: jnp.ones((s.width,)) for s in sites}
  np.testing.assert_array_equal(scoring.last_logits(params, cfg, toks),
                                scoring.last_logits(params, cfg, toks, ones, means))


def test_mean_ablating_everything_equals_direct_computation():
  params, cfg = _random_model()
  sites = sites_lib.node_sites(cfg)
  toks = jnp.asarray(task_data().tokens)
  rng = np.random.default_rng(0)
  means = {s.name: jnp.asarray(rng.normal(size=s.width), jnp.float32)
           for s in sites}
  zeros = {s.name: jnp.zeros((s.width,)) for s in sites}
  got = scoring.last_logits(params, cfg, toks, zeros, means)
  # With every node at its mean the residual stream is the embeddings plus
  # each layer's mean writes; nothing else reaches the unembedding.
  L = toks.shape[1]
  x = params["wte"]["embedding"][toks] + params["wpe"]["embedding"][:L]
  x = x + means["0.attn.resid_delta"] + means["0.mlp.resid_delta"]
  x = x[:, -1]
  x = x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + M.EPS)
  want = (x * params["ln_f"]["weight"]) @ params["lm_head"]["kernel"]
  want = want + params["final_logits_bias"] + params["bigram_table"][toks[:, -1]]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_zero_ablation_replaces_a_node_by_zero():
  """prune.ablation = "zero": an ablated node is exactly 0 (mean: exactly its
  mean), the other nodes untouched; a circuit read back ablates the same."""
  from sparse_circuits import runs  # pylint: disable=g-import-not-at-top
  params, site = hand_built_params(), "0.mlp.post_act"
  toks = jnp.asarray(task_data().tokens)
  means = P.compute_means(params, CFG, pretraining_batches(),
                          sites_lib.node_sites(CFG))
  assert means[site][0] != 0  # so that 0 and the mean differ
  mask = np.ones(CFG.d_mlp, np.float32)
  mask[0] = 0.0
  _, full = M.forward(params, toks, CFG, capture=(site,))
  for ablation, want in (("zero", 0.0), ("mean", means[site][0])):
    pruner = _pruner(ablation=ablation)
    iv = scoring.interventions({site: mask}, pruner.means)
    _, got = M.forward(params, toks, CFG, interventions=iv, capture=(site,))
    a = np.asarray(got[site])
    np.testing.assert_array_equal(a[..., 0], np.float32(want))
    np.testing.assert_array_equal(a[..., 1:], np.asarray(full[site])[..., 1:])
  zero = _pruner(ablation="zero").means
  assert all(np.all(np.asarray(v) == 0) for v in zero.values())
  doc = {"task": {"name": "hand"}, "ablation": "zero",
         "nodes": [{"site": site, "index": 0}]}
  iv = runs.Circuit(doc, means, None).apply()
  assert iv[site]["mask"][0] == 1 and not iv[site]["mask"][1:].any()
  assert all(np.all(v["mean"] == 0) for v in iv.values())
  del doc["ablation"]  # written before the field: mean-ablated
  np.testing.assert_array_equal(runs.Circuit(doc, means, None).apply()[site][
      "mean"], means[site])


def test_connectable_pairs_count_kept_node_pairs_zero_weights_included():
  """The hand-built circuit plus one neuron without weights: 4 nodes,
  6 nonzero edges among 8 connectable pairs."""
  kept = {s.name: np.zeros(s.width, bool) for s in sites_lib.node_sites(CFG)}
  kept["0.mlp.act_in"][0] = kept["0.mlp.resid_delta"][1] = True
  kept["0.mlp.post_act"][[0, 1]] = True
  io = {"embed": [A, B], "logit": [T1, T2]}
  params = hand_built_params()
  pairs = circuit_lib.connectable_pairs(params, CFG, kept, io)
  # act_in:0 -> post_act:0,1; post_act:0,1 -> resid_delta:1; 2 tokens ->
  # act_in:0; resid_delta:1 -> 2 logits.
  assert pairs == {"pairs": 8, "pairs_by_kind": {
      "weight": 4, "embedding": 2, "unembedding": 2}}
  counts = circuit_lib.edge_counts(circuit_lib.edges(params, CFG, kept, io))
  assert counts["edges"] == 6 and counts["edges_by_kind"]["weight"] == 2


def test_node_sets_evaluated_together_equal_each_alone():
  """7 node sets go as calls of 4, 2 and 1, never padded (a lone set padded
  to 4 was 4x its work); every row equals that set evaluated alone."""
  pruner, data = _pruner(), task_data()
  assert [S.call_rows(n) for n in (1, 2, 3, 4, 5, 7)] == [1, 2, 2, 4, 4, 4]
  # Capped by token positions: 2**16 of them hold 2 sets of 512 x 39.
  assert [S.call_rows(n, 512 * 39) for n in (1, 2, 3, 4, 7)] == [1, 2, 2, 2, 2]
  assert S.call_rows(4, S.EVAL_TOKENS + 1) == 1  # one set at least
  rng = np.random.default_rng(0)
  keep = rng.random((7, pruner.n_nodes)) < 0.7
  keep[:, _flat(pruner, CIRCUIT)] = True
  for i in range(1, 7, 2):  # every other set misses one circuit node
    keep[i, _flat(pruner, [sorted(CIRCUIT)[i % len(CIRCUIT)]])] = False
  calls = []
  program = pruner._diffs
  pruner._diffs = lambda k, *a: calls.append(k.shape[0]) or program(k, *a)
  together = pruner.diffs(keep, data)
  assert calls == [4, 2, 1]
  alone = np.concatenate([pruner.diffs(keep[i:i + 1], data) for i in range(7)])
  np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-6)
  assert not np.allclose(together[0], together[1])  # the sets do differ
  assert not np.allclose(together[4], together[5])


def test_mask_training_compiles_its_step_once_on_a_mesh(caplog):
  # A run's parameters lie on a mesh (NamedSharding), so the step's outputs
  # do; its first inputs must too, or the second call compiles it again.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  params = jax.device_put(hand_built_params(), jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  pruner = _pruner(params, steps=3)
  settings = S.sweep_settings(prune_config(sweep_size=3))  # a shape of its own
  caplog.set_level(logging.WARNING, logger="jax")
  with jax.log_compiles(True):
    flat, _, bad = pruner.train(task_data(), settings, progress=False)
  compiled = [r.getMessage() for r in caplog.records
              if "Finished XLA compilation of jit(step)" in r.getMessage()]
  assert len(compiled) == 1, compiled
  assert flat.shape == (3, pruner.n_nodes) and not bad.any()


def test_sweep_is_a_seeded_latin_hypercube_over_log_ranges():
  pc = prune_config(sweep_size=17, sweep_k_coef=(1e-4, 1e-2),
                    sweep_lr=(1e-3, 1e-1), sweep_temperature=(0.05,),
                    sweep_init_mean=(0.03, 0.3))
  settings = S.sweep_settings(pc)
  assert settings == S.sweep_settings(pc) and len(settings) == 17
  assert settings[0] == S.Setting(1e-2, 3e-3, 0.1, 0.1, 0)
  assert len({s.seed for s in settings}) == 17
  rest = settings[1:]
  assert all(s.temperature == pytest.approx(0.05) for s in rest)
  for f, (lo, hi) in (("k_coef", (1e-4, 1e-2)), ("lr", (1e-3, 1e-1))):
    u = (np.log([getattr(s, f) for s in rest]) - np.log(lo)) / np.log(hi / lo)
    assert sorted(np.floor(u * 16).astype(int)) == list(range(16)), f


@pytest.mark.slow
def test_vectorised_sweep_equals_separate_runs_and_survives_a_nan():
  pruner, data = _pruner(steps=40), task_data()
  settings = [S.Setting(1e-3, 1e-2, 0.1, 0.1, 0),
              S.Setting(1e-2, 3e-2, 0.0, 0.1, 1),  # T = 0: NaN gradients
              S.Setting(1e-2, 3e-2, 0.05, 0.2, 2)]
  tau_all, last, bad = pruner.train(data, settings, progress=False)
  assert list(bad) == [False, True, False]
  assert np.all(np.isfinite(tau_all))
  for i in (0, 2):
    tau_one, _, bad_one = pruner.train(data, [settings[i]], progress=False)
    assert not bad_one[0]
    np.testing.assert_allclose(tau_all[i], tau_one[0], rtol=1e-5, atol=1e-6,
                               err_msg=str(settings[i]))


def test_batched_k_search_finds_the_smallest_passing_k():
  pruner, data = _pruner(), task_data()
  rng = np.random.default_rng(0)
  tau = rng.uniform(-1, 1, (3, pruner.n_nodes))
  circuit = _flat(pruner, CIRCUIT)
  tau[:, circuit] = [[1.5], [-2.0], [0.95]]  # ranked first, last, first
  tau[2, ~circuit] = -0.5  # and only they positive
  sr = pruner.search(tau, data, 0.15)
  for s in range(3):
    k = sr.k[s]
    losses = pruner.scores(np.stack([S.keep_flat(sr.order[s], j,
                                                 pruner.n_nodes)
                                     for j in (k - 1, k)]), data, None)
    assert sr.reached[s] and losses.train[1] <= 0.15
    assert losses.train[0] > 0.15, (s, k)
    np.testing.assert_allclose(sr.train_loss[s], losses.train[1],
                               rtol=1e-5)
  assert sr.k[2] == 3 and sr.k_trained[2] == 3
  assert sr.k[1] == pruner.n_nodes  # the circuit is ranked last


def test_task_names_and_learned_selection(tmp_path):
  assert P.task_names(("learned",)) == (None, True)
  assert P.task_names(("a,b", "c")) == (["a", "b", "c"], False)
  with pytest.raises(ValueError, match="learned"):
    P.task_names(("learned", "a"))
  hand = _hand_task()
  reversed_ = types.SimpleNamespace(  # the model gets every pair wrong
      name="reversed", description="", train=hand.train,
      test=types.SimpleNamespace(**{**vars(hand.test),
                                    "target": hand.test.alternative,
                                    "alternative": hand.test.target}))
  tasks = {"hand": hand, "reversed": reversed_}
  pc = prune_config(min_accuracy=0.8)
  plan = P.choose_tasks(tasks, pc, hand_built_params(), CFG, str(tmp_path),
                        7, learned=True)  # no eval_summary.json: evaluates
  assert plan["hand"]["status"] == "pruned" and plan["hand"]["accuracy"] == 1
  assert plan["reversed"]["status"] == "skipped"
  assert "accuracy 0.000 < prune.min_accuracy 0.8" in plan["reversed"]["reason"]
  (tmp_path / "eval_summary.json").write_text(json.dumps(
      {"step": 7, "tasks": {"hand": {"accuracy": 0.5},
                            "reversed": {"accuracy": 0.9}}}))
  plan = P.choose_tasks(tasks, pc, hand_built_params(), CFG, str(tmp_path),
                        7, learned=True)
  assert [plan[n]["status"] for n in tasks] == ["skipped", "pruned"]
  plan = P.choose_tasks(tasks, pc, hand_built_params(), CFG, str(tmp_path),
                        8, learned=True)  # another step: evaluated again
  assert [plan[n]["status"] for n in tasks] == ["pruned", "skipped"]


def test_nonsense_labels_keep_pairs_balanced_but_break_the_rule():
  data = task_data(200)
  target, alt = controls.nonsense_labels(data, 0)
  assert np.all(target != alt)
  assert np.all(target[0::2] == alt[1::2])  # one prompt per answer a pair
  flipped = target[0::2] != data.target[0::2]
  assert 0.4 < flipped.mean() < 0.6
  np.testing.assert_array_equal(controls.nonsense_labels(data, 0)[0], target)
  assert not np.array_equal(controls.nonsense_labels(data, 1)[0], target)


@pytest.mark.parametrize("field, value", [
    ("sweep_lr", (3e-2, 3e-3)), ("sweep_k_coef", (0.0, 1e-3)),
    ("sweep_size", 0), ("stability_seeds", 0), ("min_accuracy", 1.5),
    ("tasks", ()), ("ablation", "resample")])
def test_bad_prune_config_names_the_field(field, value):
  from sparse_circuits import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config("tiny")
  config.prune[field] = value
  with pytest.raises(ValueError, match=f"prune.{field}"):
    config_lib.validate(config)


def test_bounded_k_search_finds_the_same_smallest_circuit_for_less():
  """exact=False stops a setting once it cannot beat the best circuit found:
  the winner is the exact search's, the others keep a circuit that reaches
  the target (an upper bound), and far fewer node sets are evaluated."""
  pruner, data = _pruner(), task_data()
  circuit = _flat(pruner, CIRCUIT)
  others = np.nonzero(~circuit)[0]
  tau = np.full((6, pruner.n_nodes), -0.5)
  for s, m in enumerate((9, 0, 20, 14, 30, 5)):  # the circuit behind m nodes
    tau[s, others[:m]] = 1.0
    tau[s, circuit] = 0.9
    tau[s, others[m:m + 20]] = 0.5  # and in front of 20 more
  runs, evaluated = {}, {}
  for exact in (True, False):
    calls = []
    diffs = pruner.diffs
    pruner.diffs = lambda keep, *a, **k: calls.append(len(keep)) or diffs(
        keep, *a, **k)
    runs[exact] = pruner.search(tau, data, 0.15, exact=exact)
    pruner.diffs = diffs
    evaluated[exact] = sum(calls)
  full, bounded = runs[True], runs[False]
  lead = int(np.argmin(bounded.k))
  assert bounded.k[lead] == full.k.min() == 3 and bounded.exact[lead]
  assert np.all(bounded.reached) and np.all(bounded.k >= full.k)
  assert np.all(bounded.train_loss <= 0.15)
  np.testing.assert_array_equal(full.k, [12, 3, 23, 17, 33, 8])
  assert evaluated[False] < 0.75 * evaluated[True], evaluated


def test_node_index_maps_flat_per_site_and_ids_both_ways():
  cfg = M.ModelConfig(n_layer=2, d_model=4, n_head=1, d_head=2, d_mlp=6,
                      block_size=8, vocab_size=16)
  index = sites_lib.NodeIndex(sites_lib.node_sites(cfg))
  assert index.n == 2 * (4 + 2 + 2 + 2 + 4 + 4 + 6 + 4)
  flat = np.arange(index.n)
  per_site = index.split(flat)
  assert list(per_site) == [s.name for s in index.sites]
  np.testing.assert_array_equal(per_site["0.attn.q"], [4, 5])
  np.testing.assert_array_equal(per_site["1.mlp.resid_delta"],
                                np.arange(index.n - 4, index.n))
  np.testing.assert_array_equal(index.join(per_site), flat)
  batch = np.stack([flat, -flat])  # a leading axis splits along the last
  np.testing.assert_array_equal(index.split(batch)["0.attn.q"], [[4, 5],
                                                                 [-4, -5]])
  ids = ["0.attn.act_in:3", "0.attn.q:1", "1.mlp.post_act:5"]
  mask = index.flat(ids)
  assert mask.sum() == 3 and mask[3] and mask[5]
  assert index.ids(mask) == ids
  for bad in ("0.attn.q:2", "9.attn.q:0", "0.attn.q", "x:y"):
    with pytest.raises(ValueError):
      index.flat([bad])

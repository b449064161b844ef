"""Pruning: a hand-built model whose task is computed by three known nodes."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sparse_circuits import circuit as circuit_lib
from sparse_circuits import model as M
from sparse_circuits import prune as P

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
  return types.SimpleNamespace(tokens=np.asarray(rows, np.int32),
                               target=np.asarray(target, np.int32),
                               alternative=np.asarray(alt, np.int32))


def pretraining_batches(seed=1):
  rng = np.random.default_rng(seed)
  return [np.concatenate([rng.integers(7, 16, (16, 6)),
                          rng.choice([A, B], (16, 1)),
                          rng.integers(7, 16, (16, 2))], 1).astype(np.int32)]


def prune_config(**kw):
  pc = ml_collections.ConfigDict(dict(
      target_loss=0.15, steps=200, batch_size=16, lr=3e-3, weight_decay=1e-3,
      b2=0.95, clip=1.0, init_mean=0.1, init_std=0.01, calibrate=True,
      sweep_k_coef=(1e-2,), sweep_lr=(3e-3,), sweep_temperature=(0.1,),
      sweep_seeds=(0,), seed=0))
  pc.update(kw)
  return pc


def test_hand_built_model_solves_its_task_and_needs_each_node():
  params, sites = hand_built_params(), circuit_lib.node_sites(CFG)
  data = task_data()
  means = P.compute_means(params, CFG, pretraining_batches(), sites)
  ev = P.Evaluator(params, CFG, means, data, sites, calibrate=True)
  everything = {s.name: np.ones(s.width, bool) for s in sites}
  assert ev.loss(everything) < 0.15
  for node in CIRCUIT:
    site, i = node.split(":")
    minus = {k: v.copy() for k, v in everything.items()}
    minus[site][int(i)] = False
    assert ev.loss(minus) > 0.6, node


def test_pruning_recovers_exactly_the_known_circuit():
  params, sites = hand_built_params(), circuit_lib.node_sites(CFG)
  means = {k: jnp.asarray(v) for k, v in P.compute_means(
      params, CFG, pretraining_batches(), sites).items()}
  data = task_data()
  task = types.SimpleNamespace(name="hand", train=data, test=task_data(8, 1))
  res = P.prune_task(params, CFG, means, task, prune_config(), sites,
                     progress=False)
  kept = {circuit_lib.node_id(s, int(i)) for s, m in res["keep"].items()
          for i in np.nonzero(m)[0]}
  assert kept == CIRCUIT
  assert res["reached"] and res["losses"]["circuit"] <= 0.15
  assert res["losses"]["circuit_ablated"] > 0.6
  edges = circuit_lib.edges(params, CFG, res["keep"])
  assert {(e["source"], e["target"]) for e in edges} == {
      ("0.mlp.act_in:0", "0.mlp.post_act:0"),
      ("0.mlp.post_act:0", "0.mlp.resid_delta:1")}


def test_straight_through_gradient_is_the_sigmoid_derivative():
  tau = jnp.linspace(-1, 1, 11)
  for t in (0.05, 0.1, 0.5):
    g = jax.grad(lambda x: jnp.sum(P.hard_step(x, jnp.float32(t))))(tau)
    s = jax.nn.sigmoid(tau / t)
    np.testing.assert_allclose(g, s * (1 - s) / t, rtol=1e-6)
    np.testing.assert_array_equal(P.hard_step(tau, t), (tau > 0) * 1.0)


def _random_model():
  cfg = dataclasses.replace(CFG, d_model=16, n_head=2, d_head=8, d_mlp=32,
                            pos_emb=True, afrac=0.25)
  p = M.init_params(cfg, 3)
  leaves, tree = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  p = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                for x, k in zip(leaves, keys)])
  return p, cfg


def test_all_ones_masks_reproduce_the_unpruned_logits():
  params, cfg = _random_model()
  sites = circuit_lib.node_sites(cfg)
  toks = jnp.asarray(task_data().tokens)
  means = {s.name: jnp.full((s.width,), 3.0) for s in sites}
  ones = {s.name: jnp.ones((s.width,)) for s in sites}
  np.testing.assert_array_equal(P.last_logits(params, cfg, toks),
                                P.last_logits(params, cfg, toks, ones, means))


def test_mean_ablating_everything_equals_direct_computation():
  params, cfg = _random_model()
  sites = circuit_lib.node_sites(cfg)
  toks = jnp.asarray(task_data().tokens)
  rng = np.random.default_rng(0)
  means = {s.name: jnp.asarray(rng.normal(size=s.width), jnp.float32)
           for s in sites}
  zeros = {s.name: jnp.zeros((s.width,)) for s in sites}
  got = P.last_logits(params, cfg, toks, zeros, means)
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


def test_vectorised_sweep_equals_separate_runs():
  params, sites = hand_built_params(), circuit_lib.node_sites(CFG)
  means = {k: jnp.asarray(v) for k, v in P.compute_means(
      params, CFG, pretraining_batches(), sites).items()}
  data = task_data()
  pc = prune_config(steps=40, sweep_k_coef=(1e-3, 1e-2), sweep_lr=(1e-2, 3e-2),
                    sweep_seeds=(0, 1))
  settings = P.sweep_settings(pc)
  assert len(settings) == 8
  tau_all, _ = P.train_masks(params, CFG, means, pc, data, settings, sites,
                             progress=False)
  for i, s in enumerate(settings):
    tau_one, _ = P.train_masks(params, CFG, means, pc, data, [s], sites,
                               progress=False)
    for name in tau_one:
      np.testing.assert_allclose(tau_all[name][i], tau_one[name][0],
                                 rtol=1e-5, atol=1e-6, err_msg=f"{s} {name}")

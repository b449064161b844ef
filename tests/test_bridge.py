"""Bridges and steering: the hybrid forward splices two models exactly where
it should, a short joint training lowers the bridge losses, and steering at
strength 0 is a no-op."""

import dataclasses
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparse_circuits import config_lib
from sparse_circuits.experiments import bridge as B
from sparse_circuits import model as M
from sparse_circuits.experiments import steer
from sparse_circuits import viz

SPARSE = M.ModelConfig(n_layer=2, d_model=32, n_head=2, d_head=16, d_mlp=128,
                       block_size=16, vocab_size=64, afrac=0.25)
DENSE = dataclasses.replace(SPARSE, afrac=0.0, d_model=24, d_mlp=96)


def _tokens(b=4, l=16, seed=0, vocab=64):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (b, l)),
                     jnp.int32)


def _trained_like(params, seed=1, scale=0.05):
  """Nonzero position embeddings and biases, so every path is exercised."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [l + scale * jax.random.normal(k, l.shape) for l, k in
            zip(leaves, keys)]
  return jax.tree.unflatten(tree, leaves)


def _identity_bridges(cfg):
  eye = jnp.eye(cfg.d_model)
  zero, one = jnp.zeros((cfg.d_model,)), jnp.float32(1)
  b = {"encoder": {"kernel": eye, "bias": zero},
       "decoder": {"kernel": eye, "bias": zero},
       "norm": {"dense_mean": zero, "dense_scale": one, "sparse_mean": zero,
                "sparse_scale": one}}
  return {f"h_{i}": {"attn": b, "mlp": b} for i in range(cfg.n_layer)}


def _splice(a, b, j, n_layer):
  """Parameters running a's embedding and sublayers < j, then b's sublayers
  >= j and b's head: what the d2s hybrid path at switch j must compute."""
  out = dict(b)
  for k in ("wte", "wpe"):
    out[k] = a[k]
  for i in range(n_layer):
    blk = dict(b[f"h_{i}"])
    if 2 * i < j:     # attention i comes before the switch
      blk["ln_1"], blk["attn"] = a[f"h_{i}"]["ln_1"], a[f"h_{i}"]["attn"]
    if 2 * i + 1 < j:  # so does MLP i
      blk["ln_2"], blk["mlp"] = a[f"h_{i}"]["ln_2"], a[f"h_{i}"]["mlp"]
    out[f"h_{i}"] = blk
  return out


_paths_and_loss = jax.jit(
    lambda d, s, b, toks, dc, sc: (B.all_paths(d, s, b, toks[:, :-1], dc, sc),
                                   B.loss(s, b, d, toks, dc, sc)),
    static_argnums=(4, 5))
_forward = jax.jit(lambda p, t, cfg: M.forward(p, t, cfg)[0],
                   static_argnums=2)


@pytest.mark.slow
def test_identity_bridges_between_copies_reproduce_the_model():
  params = _trained_like(M.init_params(SPARSE, 0))
  batch = _tokens(l=17)
  paths, (total, terms) = _paths_and_loss(
      params, params, _identity_bridges(SPARSE), batch, SPARSE, SPARSE)
  want = paths["dense"]
  np.testing.assert_array_equal(paths["sparse"], want)
  for direction in ("d2s", "s2d"):
    assert len(paths[direction]) == 2 * SPARSE.n_layer
    for j, got in enumerate(paths[direction]):
      np.testing.assert_array_equal(got, want, err_msg=f"{direction} at {j}")
  for t in B.TERMS:  # identical models, identity maps: nothing to bridge
    np.testing.assert_array_equal(terms[t], 0.0, err_msg=t)
  assert float(total) == float(terms["lm"])


@pytest.mark.slow
def test_hybrid_runs_each_model_on_its_side_of_the_switch():
  a = _trained_like(M.init_params(SPARSE, 0), seed=1)
  b = _trained_like(M.init_params(SPARSE, 7), seed=2)
  batch = _tokens(l=17)
  paths, _ = _paths_and_loss(a, b, _identity_bridges(SPARSE), batch, SPARSE,
                             SPARSE)
  spliced = [_forward(_splice(a, b, j, SPARSE.n_layer), batch[:, :-1], SPARSE)
             for j in range(5)]  # j = 4: all of a, with b's head
  for j, got in enumerate(paths["d2s"]):
    np.testing.assert_allclose(got, spliced[j], rtol=0, atol=1e-5,
                               err_msg=f"switch {j}")
    assert np.max(np.abs(np.asarray(got - spliced[j + 1]))) > 1e-3, (
        f"switch {j} runs the same as switch {j + 1}")
  # Rematerialised blocks (a lax.scan from the switch's layer on) run the
  # same paths; steering's additive intervention works there too.
  remat = dataclasses.replace(SPARSE, remat="block")
  paths_r, _ = _paths_and_loss(a, b, _identity_bridges(SPARSE), batch, remat,
                               remat)
  for d in ("d2s", "s2d"):
    for j, (got, want) in enumerate(zip(paths_r[d], paths[d])):
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-5,
                                 err_msg=f"remat {d} at {j}")
  iv = {"1.resid_in": {"add": paths["h_dense"][0]}}
  steered = [jax.jit(lambda p, t, c=c: M.forward(p, t, c, interventions=iv)[0])(
      a, batch[:, :-1]) for c in (SPARSE, remat)]
  np.testing.assert_allclose(steered[1], steered[0], rtol=0, atol=1e-5)
  plain = _forward(a, batch[:, :-1], SPARSE)
  assert np.max(np.abs(np.asarray(steered[0] - plain))) > 1e-3
  with pytest.raises(ValueError, match="n_layer"):
    B.init_params(dataclasses.replace(DENSE, n_layer=3), SPARSE, 0)
  with pytest.raises(ValueError, match="start=4"):
    M.forward_from(a, paths["h_dense"][0], batch[:, :-1], SPARSE, 4)


@pytest.mark.slow
def test_short_bridge_training_lowers_nmse_and_kl():
  sparse_cfg = dataclasses.replace(SPARSE, n_layer=1)  # half the compile
  dense_cfg = dataclasses.replace(DENSE, n_layer=1)
  dense = _trained_like(M.init_params(dense_cfg, 0), seed=3)
  dense["lm_head"]["kernel"] = dense["lm_head"]["kernel"] * 40  # peaked y_d
  sparse = M.init_params(sparse_cfg, 1)
  bridges = B.init_params(dense_cfg, sparse_cfg, 2)
  k = int(0.25 * sparse_cfg.d_model)
  rng = np.random.default_rng(0)
  tx = optax.adam(1e-2)
  state = (sparse, bridges)
  opt = tx.init(state)

  @jax.jit
  def step(state, opt, batch):
    def f(state):
      return B.loss(state[0], state[1], dense, batch, dense_cfg, sparse_cfg,
                    k)
    (_, terms), g = jax.value_and_grad(f, has_aux=True)(state)
    upd, opt = tx.update(g, opt, state)
    return optax.apply_updates(state, upd), opt, terms

  sums = []
  for _ in range(60):
    batch = jnp.asarray(rng.integers(0, 64, (8, 17)), jnp.int32)
    state, opt, terms = step(state, opt, batch)
    sums.append({t: float(jnp.sum(v)) for t, v in terms.items()})
  first, last = sums[0], np.mean([[s[t] for t in B.TERMS] for s in sums[-5:]],
                                 axis=0)
  for t, end in zip(B.TERMS, last):
    assert end < 0.7 * first[t], (t, first[t], end)


@pytest.mark.slow
def test_steering_at_strength_zero_leaves_the_dense_model_unchanged():
  dense = _trained_like(M.init_params(DENSE, 0), seed=3)
  sparse = _trained_like(M.init_params(SPARSE, 1), seed=4)
  bridges = B.init_params(DENSE, SPARSE, 2)
  assert steer.node_bridge("1.mlp.act_in") == (3, "1.resid_mid")
  with pytest.raises(ValueError, match="residual read node"):
    steer.node_bridge("1.mlp.post_act")
  # Rows 2i, 2i+1 form pair i (as in a task); each row's counterfactual is
  # its partner, whose answer is the partner's target.
  toks = _tokens(b=8, seed=5)
  data = types.SimpleNamespace(tokens=np.asarray(toks), target=np.arange(8),
                               last=None)
  # Layer 1's attention carries the change at earlier tokens to the last one.
  node = {"site": "0.mlp.act_in", "index": 5}
  doc = steer.sweep(dense, DENSE, sparse, SPARSE, bridges, node, data,
                    _tokens(seed=9), [0.0, 1.0], seeds=(0, 1))
  assert (doc["bridge"], doc["dense_site"]) == (1, "0.resid_mid")
  assert doc["n_prompts"] == 8 and doc["delta_norm_mean"] > 0
  plain = jax.jit(lambda p, t: jnp.exp(jax.nn.log_softmax(
      M.forward(p, t, DENSE)[0][:, -1], axis=-1)))(dense, toks)
  p = np.asarray(plain, np.float64)
  cf, own = p[np.arange(8), np.arange(8) ^ 1], p[np.arange(8), np.arange(8)]
  # Exactly: strength 0 is a no-op, for the node and every random direction.
  assert doc["p_counterfactual"][0] == float(cf.mean())
  assert doc["p_counterfactual_binary"][0] == float((cf / (cf + own)).mean())
  for c in doc["p_counterfactual_random"].values():
    assert c[0] == float(cf.mean())
  assert abs(doc["p_counterfactual"][1] - cf.mean()) > 1e-5, "strength 1 does nothing"
  # delta = activation difference * rms(sparse residual) / gain * decoder row.
  scale = steer.channel_scale(sparse, SPARSE, _tokens(seed=9), node["site"], 5)
  gain = float(sparse["h_0"]["ln_2"]["weight"][5])
  rms = steer.residual_rms(sparse, SPARSE, _tokens(seed=9), "0.resid_mid")
  np.testing.assert_allclose(scale, rms / gain, rtol=1e-6)
  delta = steer.perturbation(sparse, SPARSE, bridges, node["site"], 5,
                             toks[0::2], toks[1::2], scale)
  _, a = M.forward(sparse, toks, SPARSE, capture=(node["site"],))
  diff = a[node["site"]][1::2, :, 5] - a[node["site"]][0::2, :, 5]
  row = B.decoder_matrix(B.get(bridges, 1))[5]
  np.testing.assert_allclose(delta, diff[..., None] * scale * row, rtol=1e-4,
                             atol=1e-6)
  ctrl = steer.random_like(delta, seed=0)
  np.testing.assert_allclose(jnp.linalg.norm(ctrl, axis=-1),
                             jnp.linalg.norm(delta, axis=-1), rtol=1e-5)
  assert viz.steer_svg(doc).count("<polyline") == 2 + 2


def test_default_steering_node_is_the_read_node_with_the_largest_effect():
  doc = {"task": {"name": "t"}, "nodes": [
      {"site": "0.attn.act_in", "index": 3, "ablation_delta": 0.2, "tau": 1},
      {"site": "1.mlp.post_act", "index": 9, "ablation_delta": 5.0, "tau": 1},
      {"site": "1.mlp.act_in", "index": 7, "ablation_delta": 0.9, "tau": 1},
      {"site": "1.attn.act_in", "index": 1, "ablation_delta": None, "tau": 9}]}
  assert steer.pick_node(doc)["index"] == 7
  assert steer.pick_node(doc, "0.attn.act_in:3")["ablation_delta"] == 0.2
  assert steer.pick_node(doc, "0.attn.act_in:4")["index"] == 4
  with pytest.raises(ValueError, match="site:index"):
    steer.pick_node(doc, "0.attn.act_in")
  with pytest.raises(ValueError, match="residual read"):
    steer.pick_node(doc, "1.mlp.post_act:9")
  with pytest.raises(ValueError, match="keeps no residual read node"):
    steer.pick_node({"task": {"name": "t"}, "nodes": doc["nodes"][1:2]})


# ------------------------------------------------ the bridge and steer modes


def _micro(config, dense: bool, steps: int):
  """The micro model on `config`'s data, dense or sparse, for `steps`."""
  c = config_lib.base_config("micro")
  c.data = config.data.copy_and_resolve_references()
  if dense:
    c.model.afrac, c.sparsity.enabled = 0.0, False
  c.train.num_steps, c.train.eval_every = steps, steps
  c.train.checkpoint_every = 3
  c.tasks.n_train, c.tasks.n_test = 8, 16
  return c


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r for r in map(json.loads, f)}


def _fake_circuit(run, task, node):
  """A circuit.json as --mode=prune writes it, reduced to what steer reads,
  and the means file it refers to."""
  from sparse_circuits import sites as sites_lib  # pylint: disable=g-import-not-at-top
  out = os.path.join(run.workdir, "circuits", task)
  os.makedirs(out)
  with open(os.path.join(out, "circuit.json"), "w") as f:
    json.dump({"task": {"name": task}, "model": {"step": run.step},
               "nodes": [node], "edges": [],
               "counts": {"nodes": 1, "edges": 0}, "losses": {}}, f)
  os.makedirs(os.path.join(run.workdir, "prune"))
  np.savez(os.path.join(run.workdir, "prune", f"means_{run.step}.npz"),
           **{s.name: np.zeros(s.width, np.float32)
              for s in sites_lib.node_sites(run.cfg)})


@pytest.mark.slow
def test_bridge_mode_trains_resumes_and_steers(tmp_path, tiny_data,
                                                monkeypatch):
  from sparse_circuits import preemption, runs, train  # pylint: disable=g-import-not-at-top,reimported
  from sparse_circuits.experiments import bridge  # pylint: disable=g-import-not-at-top,reimported
  config, info = tiny_data
  config = config.copy_and_resolve_references()
  config.data.tokenizer_dir = info.tokenizer_dir
  dense_wd = str(tmp_path / "dense")
  train.run(_micro(config, dense=True, steps=3), dense_wd)

  c = _micro(config, dense=False, steps=6)
  c.data.tokenizer_dir = ""  # bridge mode takes the dense run's tokenizer
  c.train.microbatches = 2
  c.bridge.dense_workdir = dense_wd
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  bridge.run(c, straight)

  requested = preemption.StopRequest.requested

  def crash_after_step_4(self, mngr, step):
    stop = requested(self, mngr, step)
    if step == 4:
      raise KeyboardInterrupt("crash after step 4")
    return stop

  with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
    m.setattr(preemption.StopRequest, "requested", crash_after_step_4)
    bridge.run(c, resumed)
  assert not os.path.isdir(os.path.join(resumed, "checkpoints", "6"))
  bridge.run(c, resumed)  # resumes from step 3: params, bridges, optimizer, data
  a, b = _rows(straight), _rows(resumed)
  assert sorted(a) == sorted(b) == list(range(1, 7))
  for step in range(1, 7):
    for k in ("loss", "lm_loss", "nmse_d2s", "nmse_s2d", "kl_d2s/0",
              "kl_s2d/1"):
      assert a[step][k] == b[step][k], (step, k, a[step][k], b[step][k])
  assert a[6]["l0_total"] < a[1]["l0_total"], "weight sparsity did not anneal"

  # The bridged run is an ordinary run to the rest of the package.
  run = runs.load(straight)
  assert run.config.bridge.dense_workdir == os.path.abspath(dense_wd)
  logits, _ = run(run.tokenize("x = 'a"))
  assert np.all(np.isfinite(np.asarray(logits)))
  dense = runs.load(dense_wd)
  bridges = bridge.restore(straight, dense.cfg, run.cfg)
  fresh = bridge.init_params(dense.cfg, run.cfg, c.seed + 1)
  assert not np.allclose(bridges["h_0"]["mlp"]["decoder"]["kernel"],
                         fresh["h_0"]["mlp"]["decoder"]["kernel"])
  with pytest.raises(Exception, match="holds no 'bridges'"):
    bridge.restore(dense_wd, dense.cfg, dense.cfg)

  _fake_circuit(run, "single_double_quote",
                {"site": "0.mlp.act_in", "index": 3, "kind": "resid_read",
                 "ablation_delta": 0.5, "tau": 1.0})
  c.steer.strengths, c.steer.random_seeds = (0.0, 1.0), (0,)
  c.steer.reference_batches = 1
  doc = steer.run(c, straight)
  path = os.path.join(straight, "circuits", "single_double_quote")
  with open(os.path.join(path, "steer.json")) as f:
    assert json.load(f)["p_counterfactual"] == doc["p_counterfactual"]
  assert doc["node"]["site"] == "0.mlp.act_in" and doc["n_prompts"] > 0
  with open(os.path.join(path, "index.html")) as f:
    assert "Steering the dense model" in f.read()


@pytest.mark.slow
def test_cycling_switch_points_gives_the_full_sum_over_a_cycle():
  sparse_cfg = dataclasses.replace(SPARSE, n_layer=1)
  dense_cfg = dataclasses.replace(DENSE, n_layer=1)
  dense = _trained_like(M.init_params(dense_cfg, 0), seed=3)
  sparse = _trained_like(M.init_params(sparse_cfg, 1), seed=4)
  bridges = B.init_params(dense_cfg, sparse_cfg, 2)
  batch = _tokens(l=17)
  f = jax.jit(lambda j: B.loss(sparse, bridges, dense, batch, dense_cfg,
                               sparse_cfg, 8, switch=j))
  full_total, full = jax.jit(lambda: B.loss(sparse, bridges, dense, batch,
                                            dense_cfg, sparse_cfg, 8))()
  totals = []
  for j in range(2):
    total, terms = f(jnp.int32(j))
    totals.append(float(total))
    for t in ("kl_d2s", "kl_s2d"):
      np.testing.assert_allclose(terms[t][j], full[t][j], rtol=1e-5)
      assert float(terms[t][1 - j]) == 0.0
  np.testing.assert_allclose(np.mean(totals), float(full_total), rtol=1e-5)

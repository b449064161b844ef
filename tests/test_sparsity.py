"""Exact top-k masks, protection, plans and schedules."""

import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_circuits import sparsity as S


def _reference_mask(score_row, k):
  """Stable sort: largest first, ties to the lower index."""
  order = np.argsort(-score_row, kind="stable")
  m = np.zeros(score_row.shape, bool)
  m[order[:k]] = True
  return m


@pytest.mark.parametrize("quantise", [False, True])
def test_topk_mask_matches_stable_sort_including_ties(quantise):
  x = np.abs(np.random.default_rng(0).normal(size=(6, 300)))
  if quantise:  # many exact ties
    x = np.round(x * 3) / 3
  ks = np.array([1, 7, 50, 150, 299, 300])
  got = np.asarray(S.topk_mask(jnp.asarray(x, jnp.float32), ks[:, None]))
  for row, k in enumerate(ks):
    np.testing.assert_array_equal(got[row], _reference_mask(
        x[row].astype(np.float32), k))
    assert got[row].sum() == k


def test_topk_mask_zero_rows_and_traced_k():
  f = jax.jit(lambda s, k: S.topk_mask(s, k))
  m = np.asarray(f(jnp.zeros((1, 10)), jnp.int32(3)))
  np.testing.assert_array_equal(m[0], [True] * 3 + [False] * 7)


def _random_scores(rng, shape):
  """|normal| with exact ties, zeros, -0.0 and whole rows equal."""
  x = np.abs(rng.normal(size=shape)).astype(np.float32)
  flat = x.reshape(-1, shape[-1])
  flat[::4] = np.round(flat[::4] * 2) / 2          # many ties, zeros among them
  flat[1::5, ::3] = -0.0
  flat[2::7] = 0.75                                  # all equal
  if len(flat) > 3:
    flat[3] = 0.0
  return x


@pytest.mark.parametrize("shape", [(6, 5), (64, 128), (4096, 128), (2, 8, 512),
                                   (512, 512), (3, 1500), (2, 4096)])
def test_topk_mask_equals_the_bisection_bit_for_bit(shape):
  """The 4-ary search (in blocks of rows on CPU) keeps the same entries as
  the 31-step bisection on whole rows, for every k from 0 to the width."""
  rng = np.random.default_rng(sum(shape))
  n = shape[-1]
  x = jnp.asarray(_random_scores(rng, shape))
  new, ref = jax.jit(S.topk_mask), jax.jit(S.reference_topk_mask)
  for k in sorted({0, 1, 2, n // 4, n // 2, n - 1, n}):
    np.testing.assert_array_equal(np.asarray(new(x, k)), np.asarray(ref(x, k)),
                                  err_msg=f"k={k}")
  ks = jnp.asarray(rng.integers(0, n + 1, shape[:-1] + (1,)), jnp.int32)
  got = np.asarray(new(x, ks))
  np.testing.assert_array_equal(got, np.asarray(ref(x, ks)))
  np.testing.assert_array_equal(got.sum(-1, keepdims=True), np.asarray(ks))


def test_topk_mask_keeps_k_of_negative_and_signed_zero_scores():
  """-0.0 and negative scores count as 0.0: k of them, the first ones."""
  x = jnp.asarray([[-0.0] * 6, [-1.0, 2.0, -0.0, 0.0, -3.0, 0.5]])
  for f in (S.topk_mask, S.reference_topk_mask):
    np.testing.assert_array_equal(np.asarray(f(x, 3)), [
        [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1]])


def test_matrix_mask_protects_four_per_neuron():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(64, 32)).astype(np.float32)
  w[:, 5] *= 1e-3   # column 5 would lose everything to a plain top-k
  m = np.asarray(S.matrix_mask(jnp.asarray(w), 200, protect_axis=0))
  assert m.sum() == 200
  assert m.sum(axis=0).min() >= 4
  assert m[:, 5].sum() == 4
  top4 = np.argsort(-np.abs(w[:, 5]), kind="stable")[:4]
  assert set(np.nonzero(m[:, 5])[0]) == set(top4)
  m1 = np.asarray(S.matrix_mask(jnp.asarray(w), 300, protect_axis=1))
  assert m1.sum() == 300 and m1.sum(axis=1).min() >= 4


def test_schedule_anneals_linearly_then_holds():
  s = S.Schedule(num_steps=100, pfrac=0.25, expansion_factor=4.0,
                 anneal_start=0.1, anneal_end=0.5)
  assert float(s.pfrac_at(0)) == 16.0
  assert float(s.pfrac_at(10)) == 16.0
  assert abs(float(s.pfrac_at(30)) - (16 + (0.25 - 16) * 0.5)) < 1e-5
  assert float(s.pfrac_at(50)) == 0.25
  assert float(s.pfrac_at(99)) == 0.25
  assert float(s.keep_fraction("hidden", 16.0)) == 1.0
  assert float(s.keep_fraction("hidden", 0.25)) == 0.25 / 16
  assert float(s.keep_fraction("embed", 0.25)) == 0.25 / 4


def test_make_plan_rejects_too_few_for_four_per_neuron():
  abstract = {"h_0": {"mlp": {"c_fc": {"kernel": jax.ShapeDtypeStruct(
      (64, 256), jnp.float32)}}}}
  sched = S.Schedule(100, pfrac=0.25, expansion_factor=4.0)
  with pytest.raises(ValueError, match=r"h_0/mlp/c_fc/kernel.*sparsity"):
    S.make_plan(abstract, sched)
  plan = S.make_plan(abstract, S.Schedule(100, 1.0, 4.0))
  (m,) = plan.matrices
  assert m.k_final == 64 * 256 // 16 and m.protect_axis == 0


SHARDED_TOPK = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from sparse_circuits import sparsity as S
    rng = np.random.default_rng(0)
    w = np.round(rng.normal(size=(64, 96)) * 2) / 2   # many exact ties
    want = np.asarray(S.matrix_mask(jnp.asarray(w, jnp.float32), 700,
                                    protect_axis=0))
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
    for spec in (P("a", "b"), P("a", None), P(None, "b")):
      ws = jax.device_put(jnp.asarray(w, jnp.float32),
                          NamedSharding(mesh, spec))
      got = jax.jit(lambda w: S.matrix_mask(w, 700, protect_axis=0))(ws)
      np.testing.assert_array_equal(np.asarray(got), want)
    assert want.sum() == 700
    print("OK")
    """)


@pytest.mark.slow
def test_topk_mask_on_a_sharded_matrix_matches_one_device():
  """Row- and column-sharded matrices with ties give the same exact mask."""
  r = subprocess.run([sys.executable, "-c", SHARDED_TOPK],
                     cwd=os.path.dirname(os.path.dirname(__file__)),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-3000:]


def test_grouped_projection_equals_per_matrix_masks():
  """Matrices of one size searched together keep what each searched alone
  keeps, while annealing (k differs per matrix) and after, ties included."""
  from sparse_circuits import config_lib  # pylint: disable=g-import-not-at-top
  from sparse_circuits import model as model_lib  # pylint: disable=g-import-not-at-top
  from sparse_circuits import runs  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config("tiny")
  cfg = model_lib.ModelConfig.from_config(config.model)
  params = model_lib.init_params(cfg, 0)
  params = jax.tree.map(lambda w: jnp.round(w * 50) / 50, params)  # ties
  plan = runs.sparsity_plan(config, params)
  assert len({math.prod(m.shape) for m in plan.matrices}) < len(plan.matrices)
  flat = {S.path_str(p): w for p, w in
          jax.tree_util.tree_flatten_with_path(params)[0]}
  grouped_fn = jax.jit(lambda p, s: S.project(p, plan, s))
  each_fn = jax.jit(lambda p, s: S.project(p, plan, s, grouped=False))
  for step in (jnp.int32(100), jnp.int32(plan.schedule.end_step)):
    grouped, each = grouped_fn(params, step), each_fn(params, step)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(
        np.asarray(a), np.asarray(b)), grouped, each)
    got = {S.path_str(p): w for p, w in
           jax.tree_util.tree_flatten_with_path(grouped)[0]}
    want = jax.jit(lambda f, s: {m.path: S.matrix_mask(
        f[m.path], plan.k_at(m, s), m.protect_axis, plan.min_per_neuron)
                                 for m in plan.matrices})(flat, step)
    for m in plan.matrices:
      np.testing.assert_array_equal(np.asarray(got[m.path] != 0),
                                    np.asarray(want[m.path] &
                                               (flat[m.path] != 0)))

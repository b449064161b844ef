"""The Pallas AbsTopK kernel (interpreted on CPU) against `sparsity.topk_mask`:
the same bits on random rows, ties, zero rows and odd widths, the same
gradients, the same tiny model; and that it lowers for GPU and TPU."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_circuits import config_lib
from sparse_circuits import model as M
from sparse_circuits import sparsity as S
from sparse_circuits import topk_pallas as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(n, dtype, seed=0):
  """12 random rows, 4 rows of a few tied magnitudes (either sign), 2 zero
  rows and a row with a lone maximum among zeros and -0.0."""
  rng = np.random.default_rng(seed)
  rand = rng.normal(size=(12, n))
  ties = rng.choice([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 0.0], size=(4, n))
  zeros = np.zeros((2, n))
  lone = np.where(rng.random((1, n)) < 0.5, -0.0, 0.0)
  lone[0, n // 2] = 3.0
  return jnp.asarray(np.concatenate([rand, ties, zeros, lone]), dtype)


def _check_bits(x, k, **opts):
  y, lo, c = jax.jit(lambda x: T.forward_with_residuals(x, k, **opts))(x)
  want = np.asarray(S.topk_mask(jnp.abs(x), k))
  got = np.asarray(T.mask_from_residuals(y, lo, c))
  np.testing.assert_array_equal(got, want)
  assert (want.sum(-1) == k).all()
  want_y = np.asarray(jnp.where(want, x, jnp.zeros((), x.dtype)))
  # Bit for bit, signs of zero included.
  np.testing.assert_array_equal(
      np.asarray(y).view(np.uint16 if x.dtype == jnp.bfloat16 else np.uint32),
      want_y.view(np.uint16 if x.dtype == jnp.bfloat16 else np.uint32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("n, k", [(64, 16), (100, 1), (100, 99)])
def test_mask_equals_topk_mask_bit_for_bit(dtype, n, k):
  _check_bits(_rows(n, dtype), k)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_index_tie_break_and_other_blocks(dtype):
  """The bisection over the index (TPU's tie-break) gives the same bits,
  and so does any number of rows per program (a partial last block)."""
  x = _rows(48, dtype, seed=1)
  _check_bits(x, 12, tie_break="bisect")
  _check_bits(x, 5, block_rows=4)
  _check_bits(x.reshape(19, 1, 48), 30, tie_break="bisect", block_rows=8)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradient_equals_the_xla_path(dtype):
  x = _rows(40, dtype, seed=2)[:18].reshape(3, 6, 40)
  w = jax.random.normal(jax.random.key(0), x.shape).astype(dtype)

  def loss(impl):
    return lambda x, w: jnp.sum((M.abs_topk(x, 10, impl) * w).astype(
        jnp.float32) ** 2)

  want = jax.jit(jax.grad(loss("xla")))(x, w)
  got = jax.jit(jax.grad(loss("pallas")))(x, w)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # Under vmap (the prune sweep's vectorised settings) too.
  vg = jax.jit(jax.vmap(jax.grad(loss("pallas"))))(x, w)
  np.testing.assert_array_equal(np.asarray(vg), np.asarray(want))


def test_hand_example_and_k_zero():
  x = jnp.array([[3.0, -3.0, 1.0, 3.0, 0.5, -2.0]])
  np.testing.assert_array_equal(M.abs_topk(x, 2, "pallas"),
                                [[3.0, -3.0, 0, 0, 0, 0]])
  g = jax.grad(lambda x: jnp.sum(M.abs_topk(x, 3, "pallas") * 2.0))(x)
  np.testing.assert_array_equal(g, [[2.0, 2.0, 0, 2.0, 0, 0]])
  np.testing.assert_array_equal(T.abs_topk(x, 0), jnp.zeros_like(x))
  with pytest.raises(TypeError, match="float32 or bfloat16"):
    T.abs_topk(x.astype(jnp.float16), 2)


# test_model's model; interpreted kernels compile slowly, so one layer (all
# eight sites; two in the remat test).
CFG = M.ModelConfig(n_layer=2, d_model=32, n_head=2, d_head=16, d_mlp=128,
                    block_size=16, vocab_size=64, afrac=0.25)


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_tiny_model_forward_is_the_same_with_either(compute_dtype):
  cfg0 = dataclasses.replace(CFG, n_layer=1, compute_dtype=compute_dtype)
  params = M.init_params(cfg0, 0)
  toks = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 16)),
                     jnp.int32)
  out = {}
  for impl in ("xla", "pallas"):
    cfg = dataclasses.replace(cfg0, topk_impl=impl)
    out[impl] = jax.jit(lambda p, cfg=cfg: M.forward(p, toks, cfg)[0])(params)
  np.testing.assert_array_equal(np.asarray(out["pallas"]),
                                np.asarray(out["xla"]))


@pytest.mark.slow
def test_remat_topk_keeps_the_kernel_results_and_the_gradient():
  """Under model.remat=topk the backward recomputes no kernel call (each
  interpreted call is a loop: "block" recomputes the layer's calls, "topk"
  none), and the gradient is the one without remat (which, kernel call by
  kernel call, is the XLA path's: test_gradient_equals_the_xla_path)."""
  cfg0 = dataclasses.replace(CFG, n_layer=1, topk_impl="pallas",
                             afrac_sites=("attn_k", "mlp_neuron"))
  params = M.init_params(cfg0, 0)
  toks = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 16)),
                     jnp.int32)

  def grad(remat):
    cfg = dataclasses.replace(cfg0, remat=remat)
    fn = jax.grad(lambda p: jnp.sum(M.forward(p, toks, cfg)[0]))
    return jax.jit(fn).lower(params).compile()

  none, topk = grad("none"), grad("topk")
  # XLA fuses the two programs differently: test_model's remat tolerance.
  for a, b in zip(jax.tree.leaves(none(params)), jax.tree.leaves(
      topk(params))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * np.abs(a).max())
  loops = lambda c: c.as_text().count(" while(")  # pylint: disable=unnecessary-lambda-assignment
  in_layer = loops(none)  # one layer's kernel calls
  assert loops(grad("block")) - loops(topk) == in_layer > 0


def test_topk_impl_is_validated_and_auto_is_xla_until_measured():
  c = config_lib.base_config("tiny")
  assert c.model.topk_impl == "auto"
  config_lib.validate(c)
  c.model.topk_impl = "triton"
  with pytest.raises(ValueError, match="model.topk_impl"):
    config_lib.validate(c)
  with pytest.raises(ValueError, match="model.topk_impl"):
    dataclasses.replace(CFG, topk_impl="triton")
  assert M.resolve_topk_impl("auto", "cpu") == "xla"
  assert M.resolve_topk_impl("auto", "gpu") == M.AUTO_TOPK_IMPL.get("gpu",
                                                                    "xla")
  assert M.resolve_topk_impl("pallas", "cpu") == "pallas"


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_lowers_for_gpu_through_triton_and_for_tpu_through_mosaic(platform):
  """Lowered (not compiled: no device here) at the paper's MLP shape."""
  from jax import export  # pylint: disable=g-import-not-at-top
  target = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}
  fn = jax.jit(lambda x: T.forward_with_residuals(
      x, 1024, platform="gpu" if platform == "cuda" else platform))

  def lower():
    return export.export(fn, platforms=[platform], disabled_checks=[
        export.DisabledSafetyCheck.custom_call(target[platform])])(
            jax.ShapeDtypeStruct((4096, 4096), jnp.bfloat16)).mlir_module()

  try:
    text = lower()
  except RuntimeError as e:  # jax >= 0.12 asks the GPU for its capability
    if "No supported GPU devices" not in str(e):
      raise
    from jax.sharding import AbstractDevice, AbstractMesh  # pylint: disable=g-import-not-at-top
    h200 = AbstractDevice(device_kind="NVIDIA H200", num_cores=None,
                          platform="gpu")
    with jax.sharding.use_abstract_mesh(
        AbstractMesh((1,), ("x",), abstract_device=h200)):
      text = lower()
  assert target[platform] in text


SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jax.sharding import Mesh
    from sparse_circuits import sparsity, topk_pallas
    mesh = Mesh(np.array(jax.devices()), ("data",))  # as sharding.make_mesh
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 16, 96)),
                    jnp.bfloat16)
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    y = jax.jit(lambda x: topk_pallas.abs_topk(x, 24))(xs)
    want = jnp.where(sparsity.topk_mask(jnp.abs(x), 24), x, 0)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want))
    print("OK")
    """)


@pytest.mark.slow  # another process
def test_rows_sharded_over_a_mesh_give_the_same_bits():
  r = subprocess.run([sys.executable, "-c", SHARDED], cwd=REPO,
                     capture_output=True, text=True, timeout=300,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-3000:]


def test_kernel_benchmark_runs_and_checks_exactness():
  """benchmarks.topk_kernel's per-call part on a small shape (gpu_check.sh's
  kernel section; QUICK=1 runs the whole of it on CPU in minutes)."""
  from benchmarks import topk_kernel  # pylint: disable=g-import-not-at-top
  rows = topk_kernel.per_call(((16, 40, 10),), jnp.bfloat16, rounds=1)
  assert {r["method"] for r in rows} == set(topk_kernel._methods(10))  # pylint: disable=protected-access
  assert all(r["exact"] in (True, None) for r in rows), rows
  assert "pallas" in topk_kernel.format_rows(rows)


@pytest.mark.slow  # a command-line run
def test_gpu_check_dispatches_its_sections_under_the_budget():
  """A section past the budget is skipped (here the h200 compare, with no
  budget at all) and an unknown one is named."""
  r = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO,
                     capture_output=True, text=True, timeout=120,
                     env={**os.environ, "SECTIONS": "compare nonsense",
                          "BUDGET_S": "0", "PYTHON": sys.executable,
                          "OUT": "/tmp/gpu_check_t", "JAX_PLATFORMS": "cpu"})
  assert "=== compare: skipped" in r.stdout, r.stdout + r.stderr
  assert r.returncode == 2 and "unknown section nonsense" in r.stdout, (
      r.stdout + r.stderr)

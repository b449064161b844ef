"""The benchmarks in benchmarks/ (outside the library): their top-k methods
agree, the PyTorch step keeps exact k, and each runs as `python -m
benchmarks.<name>` from the repository root."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import step as step_bench
from sparse_circuits import config_lib
from sparse_circuits import train

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_topk_methods_agree():
  x = jnp.abs(jax.random.normal(jax.random.key(0), (64, 300)))
  masks = [np.asarray(m(x, 37)) for m in step_bench.METHODS.values()]
  assert all((m.sum(-1) == 37).all() for m in masks)
  for m in masks[1:]:
    np.testing.assert_array_equal(m, masks[0])


def test_torch_step_keeps_exactly_k_per_matrix():
  pytest.importorskip("torch")
  from benchmarks import torch_step  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config("micro")
  plan = train.make_setup(c, jax.devices()[:1]).plan
  step = torch_step.TorchStep(c, plan)
  loss = step.run(2)
  assert np.isfinite(loss)
  for w, k, dim, n in step.sparse:
    assert int((w != 0).sum()) == k
    if dim is not None:  # every neuron keeps its protected entries
      assert int((w != 0).sum(dim=dim).min()) >= n


@pytest.mark.parametrize("name, flag", [("step", "--rounds"),
                                        ("data_pipeline", "--helpfull")])
@pytest.mark.slow
def test_runs_as_a_module_from_the_repo_root(name, flag):
  r = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"],
                     cwd=REPO, capture_output=True, text=True, timeout=120,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  # absl prints the usage and exits with status 1 on --help.
  assert "Traceback" not in r.stderr, r.stderr[-2000:]
  assert flag in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]


def test_bench_is_no_longer_a_mode():
  from sparse_circuits import main  # pylint: disable=g-import-not-at-top
  assert "bench" not in main.MODES and "compile_check" in main.MODES
  import sparse_circuits  # pylint: disable=g-import-not-at-top
  pkg = os.path.dirname(sparse_circuits.__file__)
  assert not [f for f in os.listdir(pkg) if f.startswith("bench")]


def test_step_profile_labels_and_self_times():
  from benchmarks import step_profile as sp  # pylint: disable=g-import-not-at-top
  assert sp.label("fusion", "f32[64,64,512]",
                  ["jit(f)/jvp(abs_topk[0.mlp.post_act])/while"], 2048) == (
                      "AbsTopK 0.mlp.post_act fwd")
  assert sp.label("dot", "f32[128,512]", ["jit(f)/transpose(jvp())/dot"],
                  2048) == "matmuls bwd"
  assert sp.label("fusion", "f32[2048,2048]", ["jit(f)/optimizer/mul"],
                  2048) == "Adam etc., bigram table"
  # a loop (0-10) enclosing two ops: its self time is its loop control
  assert sorted(sp._self_times([("w", 0, 10), ("a", 1, 4), ("b", 5, 9)])) == [
      ("a", 3), ("b", 4), ("w", 3)]


def test_step_profile_of_a_small_step():
  from benchmarks import step_profile as sp  # pylint: disable=g-import-not-at-top
  f = jax.jit(lambda a: jnp.tanh(a @ a).sum())
  a = jnp.ones((256, 256))
  compiled = f.lower(a).compile()

  def run(k):
    for _ in range(k):
      out = compiled(a)
    jax.block_until_ready(out)
  prof = sp.profile(compiled, run, 2, vocab=2048)
  assert prof["matmuls fwd"] > 0 and prof["wall"] > 0
  assert "by kind" in sp.format_profile(prof, 2)


@pytest.mark.slow  # two train steps and six programs compiled: ~1 min
def test_ab_bench_times_before_and_now_and_they_give_the_same_bits():
  """`--ab`: the code before (`before_code`, restored after) and now, one
  step from the same state giving the same bits."""
  from sparse_circuits import sparsity  # pylint: disable=g-import-not-at-top
  topk, project = sparsity.topk_mask, sparsity.project
  with step_bench.before_code():
    assert sparsity.topk_mask is sparsity.reference_topk_mask
  assert (sparsity.topk_mask, sparsity.project) == (topk, project)
  r = step_bench.ab_bench(config_lib.base_config("micro"), rounds=1)
  assert r["same_bits"], r
  assert all(r["times"][p + ", now"] > 0 for p in r["pairs"])
  assert "the same bits" in step_bench.format_ab(r)

"""Training: exact sparsity every step, golden values, resume, sharding."""

import json
import os
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_circuits import config_lib
from sparse_circuits import sparsity
from sparse_circuits import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def micro_config(num_steps=30):
  """A model small enough for a CPU test; sparse (hidden keep 1/4, embed
  1/2 after annealing) with AbsTopK at all eight sites."""
  c = config_lib.base_config("tiny")
  c.model.n_layer, c.model.d_model, c.model.n_head = 1, 32, 2
  c.model.d_head, c.model.d_mlp, c.model.block_size = 16, 128, 32
  c.sparsity.pfrac, c.sparsity.expansion_factor = 1.0, 2.0
  c.train.num_steps, c.train.batch_size = num_steps, 8
  c.train.log_every, c.train.eval_every = 1, 10
  c.train.checkpoint_every, c.train.eval_batches = 10, 1
  c.data.max_corpus_bytes = 2_500_000
  c.data.eval_fraction = 0.03
  return c


def _batches(config, n, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.integers(0, 2048, (config.train.batch_size,
                                             config.model.block_size + 1)),
                      jnp.int32) for _ in range(n)]


def test_exact_k_and_four_per_neuron_after_every_step_while_annealing():
  config = micro_config(30)
  setup = train.make_setup(config)
  params, opt = train.init_state(setup, 0)
  step_fn = train.make_train_step(setup)
  k_at = jax.jit(lambda s: {m.path: setup.plan.k_at(m, s)
                            for m in setup.plan.matrices})
  seen_k = set()
  for step, batch in enumerate(_batches(config, 30)):
    params, opt, _ = step_fn(params, opt, jnp.int32(step), batch)
    ks = jax.device_get(k_at(jnp.int32(step)))
    flat = {sparsity.path_str(p): np.asarray(v) for p, v in
            jax.tree_util.tree_flatten_with_path(params)[0]}
    for m in setup.plan.matrices:
      w = flat[m.path]
      assert np.count_nonzero(w) == ks[m.path], (step, m.path)
      if m.protect_axis is not None:
        per_neuron = np.count_nonzero(w, axis=m.protect_axis)
        assert per_neuron.min() >= 4, (step, m.path)
      seen_k.add((m.path, int(ks[m.path])))
  # The schedule really annealed: several k per matrix, ending at k_final.
  for m in setup.plan.matrices:
    ks = sorted(k for p, k in seen_k if p == m.path)
    assert ks[0] == m.k_final and len(ks) > 3, m.path


def test_golden_one_step():
  """Loss before and after one step of the micro config on a fixed batch.

  If this fails after a change: a change in the first value means the model
  or its init changed; in the second only, the optimizer recipe or the
  sparsity projection changed. Update the numbers only if that was intended.
  """
  config = micro_config(30)
  setup = train.make_setup(config)
  params, opt = train.init_state(setup, 0)
  step_fn = train.make_train_step(setup)
  (batch,) = _batches(config, 1)
  params, opt, m0 = step_fn(params, opt, jnp.int32(0), batch)
  params, opt, m1 = step_fn(params, opt, jnp.int32(1), batch)
  got = (float(m0["loss"]), float(m1["loss"]))
  np.testing.assert_allclose(got, GOLDEN, rtol=2e-5, err_msg=str(got))


GOLDEN = (7.6265549659729, 7.286434173583984)


@pytest.mark.parametrize("field, value, match", [
    ("model.d_model", 0, "model.d_model"),
    ("model.afrac", 1.5, "model.afrac"),
    ("sparsity.pfrac", 0.05, "sparsity.pfrac"),
    ("train.num_steps", 0, "train.num_steps"),
    ("model.compute_dtype", "float16", "model.compute_dtype"),
    ("mesh.shape", (1, 1), "mesh.shape"),
])
def test_bad_config_names_the_field(field, value, match):
  config = micro_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)


def test_mesh_axis_that_does_not_divide_a_parameter_is_named():
  from sparse_circuits import sharding  # pylint: disable=g-import-not-at-top
  mesh = types.SimpleNamespace(shape={"data": 1, "fsdp": 2, "tensor": 4})
  rules = [tuple(r) for r in micro_config().mesh.rules]
  with pytest.raises(ValueError, match="'fsdp'.*h_0/mlp/c_fc/kernel"):
    sharding.spec_for("h_0/mlp/c_fc/kernel", (33, 128), rules, mesh)
  with pytest.raises(ValueError, match="'tensor'.*h_0/mlp/c_fc/kernel"):
    sharding.spec_for("h_0/mlp/c_fc/kernel", (32, 130), rules, mesh)
  assert tuple(sharding.spec_for("h_0/mlp/c_fc/kernel", (32, 128), rules,
                                 mesh)) == ("fsdp", "tensor")


def _run_main(workdir, *overrides, env=None, check=True):
  cmd = [sys.executable, "-m", "sparse_circuits.main",
         "--config=configs/tiny.py", "--mode=train", f"--workdir={workdir}"]
  cmd += [f"--config.{o}" for o in overrides]
  return subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})},
                        capture_output=True, text=True, check=check,
                        timeout=600)


MICRO_FLAGS = (
    "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.d_head=16",
    "model.d_mlp=128", "model.block_size=32", "sparsity.pfrac=1.0",
    "sparsity.expansion_factor=2.0", "train.num_steps=20",
    "train.batch_size=8", "train.log_every=1", "train.eval_every=10",
    "train.checkpoint_every=10", "train.eval_batches=1",
    "data.max_corpus_bytes=2500000", "data.eval_fraction=0.03")


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  return {r["step"]: r["loss"] for r in rows}


def test_kill_and_resume_gives_the_same_losses(tmp_path, tiny_data):
  _, info = tiny_data
  tok = f"data.tokenizer_dir={info.tokenizer_dir}"
  straight, crashed = tmp_path / "straight", tmp_path / "crashed"
  _run_main(straight, *MICRO_FLAGS, tok)
  r = _run_main(crashed, *MICRO_FLAGS, tok, check=False,
                env={"SPARSE_CIRCUITS_KILL_AT_STEP": "15"})
  assert r.returncode != 0, "the process should have been killed"
  assert os.path.isdir(crashed / "checkpoints" / "10")
  assert not os.path.isdir(crashed / "checkpoints" / "20")
  _run_main(crashed, *MICRO_FLAGS, tok)
  a, b = _losses(straight), _losses(crashed)
  assert sorted(a) == sorted(b) == list(range(1, 21))
  for step in range(1, 21):
    assert a[step] == b[step], (step, a[step], b[step])
  # init_from warm-starts the parameters of a new run from another run.
  warm = tmp_path / "warm"
  _run_main(warm, *MICRO_FLAGS, tok, f"train.init_from={straight}")
  assert _losses(warm)[1] < a[1] - 0.5, (_losses(warm)[1], a[1])


def test_non_finite_loss_stops_with_message_and_keeps_last_checkpoint(
    tmp_path, tiny_data):
  _, info = tiny_data
  r = _run_main(tmp_path, *MICRO_FLAGS, f"data.tokenizer_dir={info.tokenizer_dir}",
                "opt.lr=1e30", "opt.grad_rms_norm=False", check=False)
  assert r.returncode != 0
  assert "non-finite" in r.stderr, r.stderr[-2000:]
  ckpts = os.listdir(tmp_path / "checkpoints") if os.path.isdir(
      tmp_path / "checkpoints") else []
  # Whatever was saved before the blow-up restores to finite parameters.
  for c in ckpts:
    assert c.isdigit()


SHARDED = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, {tests!r})
    from test_train import micro_config, _batches
    from sparse_circuits import train
    out = []
    for shape, devs in (((1, 1, 1), jax.devices()[:1]), ((2, 2, 2), None)):
      c = micro_config(30)
      c.mesh.shape = shape
      setup = train.make_setup(c, devs)
      params, opt = train.init_state(setup, 0)
      step = train.make_train_step(setup)
      losses = []
      for i, b in enumerate(_batches(c, 3)):
        params, opt, m = step(params, opt, jnp.int32(i), b)
        losses.append(float(m["loss"]))
      nz = sum(int(np.count_nonzero(np.asarray(x)))
               for x in jax.tree.leaves(params))
      out.append((losses, nz))
    print(out)
    (l1, nz1), (l8, nz8) = out
    np.testing.assert_allclose(l1, l8, rtol=0, atol=1e-5)
    assert nz1 == nz8, (nz1, nz8)
    print("OK")
    """)


def test_eight_devices_mesh_222_matches_one_device():
  code = SHARDED.format(tests=os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-3000:]

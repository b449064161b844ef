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
  c = config_lib.base_config("micro")
  c.train.num_steps = num_steps
  return c


def _batches(config, n, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.integers(0, 2048, (config.train.batch_size,
                                             config.model.block_size + 1)),
                      jnp.int32) for _ in range(n)]


@pytest.mark.slow
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


# dense k; annealed k
@pytest.mark.parametrize("step", [pytest.param(0, marks=pytest.mark.slow), 29])
def test_microbatches_give_the_same_update(step):
  """train.microbatches = 4 sums four microbatches' gradients inside the
  step: the same loss, metrics and parameters as one batch, up to float
  rounding (a reordering of sums)."""
  out = {}
  for micro in (1, 4):
    config = micro_config(30)
    config.train.microbatches = micro
    setup = train.make_setup(config)
    params, opt = train.init_state(setup, 0)
    (batch,) = _batches(config, 1)
    out[micro] = jax.device_get(train.make_train_step(setup)(
        params, opt, jnp.int32(step), batch))
  (p1, o1, m1), (p4, o4, m4) = out[1], out[4]
  for k in ("loss", "grad_norm", "lr"):
    np.testing.assert_allclose(m4[k], m1[k], rtol=1e-5, err_msg=k)
  assert m4["dead_neurons"] == m1["dead_neurons"]
  assert m4["l0"] == m1["l0"]
  for a, b in zip(jax.tree.leaves((p1, o1)), jax.tree.leaves((p4, o4))):
    # Rounding is relative to a tensor's scale (measured: <= 1e-5 of the
    # largest entry; a wrong scale or a lost microbatch is O(1)).
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max())
  assert not all(np.array_equal(a, b) for a, b in  # it really moved
                 zip(jax.tree.leaves(p1), jax.tree.leaves(
                     train.init_state(train.make_setup(micro_config(30)),
                                      0)[0])))


def test_microbatches_that_do_not_split_the_batch_are_refused():
  config = micro_config()
  config.train.microbatches = 3
  with pytest.raises(ValueError, match="train.microbatches"):
    config_lib.validate(config)


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
         f"--config={MICRO}", "--mode=train", f"--workdir={workdir}"]
  cmd += [f"--config.{o}" for o in overrides]
  return subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})},
                        capture_output=True, text=True, check=check,
                        timeout=600)


MICRO = "configs/base.py:micro"  # 20 steps; checkpoints at 10 and 20


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  return {r["step"]: r["loss"] for r in rows}


# Runs `--mode=train` through the CLI with hook(step) called after each
# step's stop check (the place a signal is noticed): HOOK is its body.
_HOOKED = textwrap.dedent("""
    import sys
    sys.argv = {argv!r}  # before any import can parse flags
    import os, signal
    from absl import app
    from sparse_circuits import main, preemption
    def hook(step):
    {hook}
    requested = preemption.StopRequest.requested
    def requested_then_hook(self, mngr, step):
      stop = requested(self, mngr, step)
      hook(step)
      return stop
    preemption.StopRequest.requested = requested_then_hook
    app.run(main.main)
    """)


def _run_hooked(workdir, hook, *overrides):
  argv = ["main", f"--config={MICRO}", "--mode=train",
          f"--workdir={workdir}", *(f"--config.{o}" for o in overrides)]
  code = _HOOKED.format(argv=argv, hook=textwrap.indent(
      textwrap.dedent(hook), "  "))
  return subprocess.run([sys.executable, "-c", code], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_data):
  """An uninterrupted 20-step micro run: (workdir, losses, tokenizer flag)."""
  tok = f"data.tokenizer_dir={tiny_data[1].tokenizer_dir}"
  workdir = tmp_path_factory.mktemp("straight")
  _run_main(workdir, tok)
  return workdir, _losses(workdir), tok


def _largest_file(directory):
  files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]
  return max(files, key=os.path.getsize)


@pytest.mark.slow
def test_sigterm_kill_and_damage_resume_with_the_same_losses(tmp_path,
                                                            straight):
  """SIGTERM, then kill -9, then a truncated checkpoint: each time the run
  goes on from the newest good checkpoint and every loss equals the
  uninterrupted run's (bit for bit: same batches, same program)."""
  _, want, tok = straight
  run = tmp_path / "run"
  ckpts = run / "checkpoints"

  def check_losses():
    got = _losses(run)
    assert sorted(got) == sorted(want) == list(range(1, 21))
    for step in range(1, 21):
      assert got[step] == want[step], (step, got[step], want[step])

  # SIGTERM while step 14 runs: it finishes, saves 14, exits 0.
  r = _run_hooked(run, "if step == 13: os.kill(os.getpid(), signal.SIGTERM)",
                  tok)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"stopped by SIGTERM after step 14: saved {ckpts}/14" in r.stdout, (
      r.stdout)
  assert sorted(os.listdir(ckpts)) == ["10", "14"]
  assert not os.path.exists(run / "LOCK")

  # A hard crash (kill -9) after that durable save: nothing saved at 17.
  r = _run_hooked(run, "if step == 17: os.kill(os.getpid(), signal.SIGKILL)",
                  tok)
  assert r.returncode == -9, (r.returncode, r.stderr[-3000:])
  assert sorted(os.listdir(ckpts)) == ["10", "14"]
  assert os.path.exists(run / "LOCK")  # the dead process's, taken over next
  with open(run / "metrics.jsonl", "a") as f:  # as if killed mid-write
    f.write('{"step": 18, "lo')

  r = _run_main(run, tok)
  assert "taking over the lock" in r.stdout, r.stdout
  assert sorted(os.listdir(ckpts)) == ["14", "20"]
  check_losses()

  # The newest checkpoint's largest file cut in half: resume from 14.
  big = _largest_file(ckpts / "20")
  cut = os.path.getsize(big) // 2
  with open(big, "r+b") as f:
    f.truncate(cut)
  r = _run_main(run, tok)
  warned = [l for l in (r.stdout + r.stderr).splitlines() if "damaged" in l]
  assert len(warned) == 1 and "step 20" in warned[0] and (
      "restored step 14" in warned[0]), r.stdout + r.stderr[-3000:]
  assert "shutting down" not in r.stderr and "Traceback" not in r.stderr
  assert sorted(os.listdir(ckpts)) == ["14", "20", "20.damaged"]
  assert os.path.getsize(ckpts / "20.damaged" / os.path.relpath(
      big, ckpts / "20")) == cut  # moved aside as it was, not deleted
  check_losses()


@pytest.mark.slow
def test_init_from_warm_starts_a_new_run(tmp_path, straight):
  workdir, want, tok = straight
  warm = tmp_path / "warm"
  _run_main(warm, tok, f"train.init_from={workdir}")
  assert _losses(warm)[1] < want[1] - 0.5, (_losses(warm)[1], want[1])


@pytest.mark.slow
def test_non_finite_loss_stops_with_message_and_keeps_last_checkpoint(
    tmp_path, tiny_data):
  _, info = tiny_data
  r = _run_main(tmp_path, f"data.tokenizer_dir={info.tokenizer_dir}",
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


@pytest.mark.slow
def test_eight_devices_mesh_222_matches_one_device():
  code = SHARDED.format(tests=os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-3000:]

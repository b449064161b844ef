"""Scale-out: two processes over loopback, the compile check, model FLOPs.

The multi-process test starts real `jax.distributed` jobs (two processes of
4 fake CPU devices each, JAX's gloo CPU collectives) and compares them with
one process of 8 fake devices on the same (4, 2, 1) mesh. (A mesh with a
tensor axis would do too but is ~20x slower here: the weight top-k's
tie-break cumsum runs quadratically on a matrix sharded along its rows.)
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from sparse_circuits import config_lib
from sparse_circuits import data
from sparse_circuits import flops
from sparse_circuits import runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train import MICRO  # pylint: disable=g-import-not-at-top,wrong-import-position

MESH = "mesh.shape=(4,2,1)"  # batch over data x fsdp, parameters over fsdp


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                              "JAX_PROCESS_ID", "SPARSE_CIRCUITS_"))}
  # LLVM -O0: compiles twice as fast; these tiny steps barely notice.
  env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                      "--xla_backend_optimization_level=0")
  env["JAX_PLATFORMS"] = "cpu"
  return {**env, **extra}


def _train(workdir, n_proc, overrides, env=None, timeout=300):
  """One training invocation as n_proc processes; [(stdout, stderr)]."""
  cmd = [sys.executable, "-m", "sparse_circuits.main",
         f"--config={MICRO}", "--mode=train", f"--workdir={workdir}",
         *(f"--config.{o}" for o in overrides)]
  port = _free_port()
  procs = [subprocess.Popen(
      cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=_env(8 // n_proc, **(env or {}), **({} if n_proc == 1 else dict(
          JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
          JAX_NUM_PROCESSES=str(n_proc), JAX_PROCESS_ID=str(p)))))
           for p in range(n_proc)]
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=timeout)
      outs.append((p.returncode, out, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (rc, out, err) in enumerate(outs):
    assert rc == 0, f"process {i}:\n{out}\n{err[-4000:]}"
  return [(out, err) for _, out, err in outs]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f)}


@pytest.mark.slow
def test_two_processes_train_save_resume_like_one_process(tmp_path, tiny_data):
  """Two processes x 4 fake devices train 7 steps of the micro config,
  checkpointing at 5; a second two-process invocation restores step 5 and
  trains to 7 again. Every loss equals one process x 8 devices'."""
  _, info = tiny_data
  common = (MESH, f"data.tokenizer_dir={info.tokenizer_dir}",
            "train.num_steps=7", "train.checkpoint_every=5")
  one, two = tmp_path / "one", tmp_path / "two"
  _train(one, 1, common)
  first = _train(two, 2, common)
  assert "distributed: 2 processes, 8 devices (4 per process, cpu)" in (
      first[0][0])
  ckpts = two / "checkpoints"
  assert sorted(os.listdir(ckpts)) == ["5", "7"]
  # One checkpoint written by both hosts; each saved its data position.
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(
      os.listdir(ckpts / "5" / "data"))
  straight = _losses(two)
  shutil.rmtree(ckpts / "7")  # as if the job had died after step 5
  second = _train(two, 2, common)
  resumed = _losses(two)
  # Process 0 alone reports: message, progress bar (stderr), metrics.
  (out0, err0), (out1, err1) = second
  assert "trained to step 7" in out0 and "train:" in err0
  assert "trained to step" not in out1 and "train:" not in err1, (out1, err1)
  want = _losses(one)
  assert sorted(want) == sorted(straight) == sorted(resumed) == list(
      range(1, 8))
  steps = range(1, 8)
  ref = np.array([want[s] for s in steps])
  # Same global batches, same program; only the order of the cross-process
  # sums (gloo over loopback vs in-process) may differ.
  for got in (straight, resumed):
    got = np.array([got[s] for s in steps])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5,
                               err_msg=f"1 process: {ref}\n2: {got}")


def test_global_batch_is_the_same_whatever_the_process_count(tiny_data):
  config, info = tiny_data
  for b in range(3):
    whole = next(iter_at(config, info, 0, 1, b))
    parts = [next(iter_at(config, info, p, 4, b)) for p in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def iter_at(config, info, index, count, skip):
  it = data.train_iterator(config, info, index, count)
  for _ in range(skip):
    next(it)
  return it


# ------------------------------------------------------------ compile check


def _compile_check(config, *overrides, devices=8, timeout=300):
  cmd = [sys.executable, "-m", "sparse_circuits.main", f"--config={config}",
         "--mode=compile_check", "--workdir=unused",
         *(f"--config.{o}" for o in overrides)]
  env = _env(devices)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.slow
def test_compile_check_paper_on_8_devices_reports_memory():
  """The full paper model (8 layers, batch 512 x 256) on a (4, 2, 1) mesh of
  8 fake CPU devices: both steps compile (~40 s on 2 loaded cores)."""
  r = _compile_check("configs/paper.py", "mesh.shape=(4,2,1)")
  out = r.stdout + r.stderr
  assert r.returncode == 0, out[-4000:]
  assert "8 cpu devices" in r.stdout, r.stdout
  for program in ("train step", "prune step"):
    line = next((l for l in r.stdout.splitlines() if l.startswith(program)),
                None)
    assert line is not None, r.stdout
    assert line.count("GB") == 3, line  # args, temp, peak per device
  assert "per device" in r.stdout and "GFLOP" in r.stdout, r.stdout


@pytest.mark.slow
def test_compile_check_names_the_axis_that_does_not_divide():
  # d_mlp 4100 is not a multiple of the 8-way tensor axis.
  r = _compile_check("configs/paper.py", "mesh.shape=(1,1,8)",
                     "model.d_mlp=4100")
  assert r.returncode == 1, (r.stdout + r.stderr)[-3000:]
  assert "compile_check FAILED" in r.stderr, r.stderr[-3000:]
  assert "mesh axis 'tensor' of size 8 does not divide" in r.stderr, (
      r.stderr[-3000:])
  assert "mlp/c_fc/kernel" in r.stderr


@pytest.mark.slow
def test_compile_check_fails_over_the_memory_limit():
  r = _compile_check(MICRO,
                     "distributed.device_memory_gb=0.001", devices=1)
  assert r.returncode == 1, (r.stdout + r.stderr)[-3000:]
  assert "over the limit of 0.001 GB" in r.stderr, r.stderr[-3000:]
  assert "train step" in r.stdout  # the table is still printed


def test_model_flops_formula_for_the_paper_model():
  c = config_lib.base_config("paper")
  n_active = 8 * (1024 * 3072 + 1024 * 1024 + 2 * 1024 * 4096) + 1024 * 2048
  assert flops.param_count(runs.model_config(c), matmul_only=True) == n_active
  assert flops.model_flops_per_token(c) == 6 * n_active + 6 * 8 * 256 * 1024


def test_peak_of_known_devices_only():
  assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert flops.peak_tflops("NVIDIA H100 PCIe") == 756.0
  assert flops.peak_tflops("TPU v5 lite") == 197.0
  assert flops.peak_tflops("cpu") is None

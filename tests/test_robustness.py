"""What survives what: damaged checkpoints, a second process, bad inputs.

(SIGTERM and kill -9 during training are in test_train.py.) In-process
tests use tiny hand-made checkpoints; the command-line tests stop before
anything compiles, so each costs one interpreter start.
"""

import importlib.metadata
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from sparse_circuits import checkpoints
from sparse_circuits import config_lib
from sparse_circuits import corpus as corpus_lib
from sparse_circuits import errors
from sparse_circuits import layout
from sparse_circuits import lock
from sparse_circuits import preemption
from sparse_circuits import reporting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------- checkpoints

ABSTRACT = {"w": jax.ShapeDtypeStruct((64, 256), jnp.float32),
            "b": jax.ShapeDtypeStruct((3,), jnp.float32)}


def _params(step):
  return {"w": jnp.full((64, 256), float(step)), "b": jnp.full((3,), step,
                                                              jnp.float32)}


def _save_steps(workdir, steps):
  with checkpoints.manager(str(workdir), keep=5, async_save=False) as mngr:
    for s in steps:
      checkpoints.save(mngr, s, _params(s), {"mu": _params(s)},
                       ml_collections.ConfigDict({"tag": s}))


def _truncate_largest(directory):
  files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]
  big = max(files, key=os.path.getsize)
  with open(big, "r+b") as f:
    f.truncate(os.path.getsize(big) // 2)


@pytest.fixture
def damaged_warnings(caplog):
  caplog.set_level(logging.WARNING, logger="sparse_circuits")
  return lambda: [r.getMessage() for r in caplog.records
                  if r.levelno == logging.WARNING and "damaged" in
                  r.getMessage()]


def test_restore_walks_back_past_a_damaged_step_and_moves_it_aside(
    tmp_path, damaged_warnings):
  _save_steps(tmp_path, (20, 40, 60))
  _truncate_largest(tmp_path / "checkpoints" / "60" / "params")
  params, step = checkpoints.restore_params(str(tmp_path), ABSTRACT)
  assert step == 40 and float(params["w"][0, 0]) == 40.0
  (line,) = damaged_warnings()
  assert "step 60" in line and "restored step 40" in line, line
  assert "OUT_OF_RANGE" in line or "Error" in line, line  # says why
  assert sorted(os.listdir(tmp_path / "checkpoints")) == [
      "20", "40", "60.damaged"]
  assert checkpoints.latest_step(str(tmp_path)) == 40
  # The step asked for by number is not replaced by another.
  _truncate_largest(tmp_path / "checkpoints" / "20" / "params")
  with pytest.raises(errors.CheckpointError, match="step 20"):
    checkpoints.restore_params(str(tmp_path), ABSTRACT, step=20)
  assert "20" in os.listdir(tmp_path / "checkpoints")


def test_config_falls_back_past_an_unreadable_meta(tmp_path, damaged_warnings):
  _save_steps(tmp_path, (10, 20))
  with open(tmp_path / "checkpoints" / "20" / "meta" / "metadata", "w") as f:
    f.write('{"step": 20, "conf')
  assert checkpoints.load_config(str(tmp_path)).tag == 10
  assert len(damaged_warnings()) == 1
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20.damaged"]


def test_a_checkpoint_records_the_package_versions(tmp_path):
  # pip does not pin the packages, and another set of them moved the main
  # job's figures: every result file says which produced it.
  _save_steps(tmp_path, (10,))
  with open(tmp_path / "checkpoints" / "10" / "meta" / "metadata") as f:
    env = json.load(f)["environment"]
  assert env == reporting.environment()
  assert env["packages"]["jax"] == jax.__version__
  assert env["packages"]["flax"] == importlib.metadata.version("flax")
  assert env["python"] == platform.python_version()
  assert env["backend"] == "cpu"


def test_no_readable_checkpoint_is_one_error_and_moves_nothing(tmp_path):
  _save_steps(tmp_path, (10, 20))
  for s in ("10", "20"):
    _truncate_largest(tmp_path / "checkpoints" / s / "params")
  with pytest.raises(errors.CheckpointError,
                     match=r"no readable checkpoint.*step 20: .*step 10: "):
    checkpoints.restore_params(str(tmp_path), ABSTRACT)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]
  with pytest.raises(errors.CheckpointError, match="no checkpoint in"):
    checkpoints.restore_params(str(tmp_path / "empty"), ABSTRACT)


def test_reads_abandoned_by_a_failed_restore_print_nothing(
    tmp_path, monkeypatch, damaged_warnings):
  """Orbax closes a failed restore's event loop while TensorStore threads
  still finish its other reads; each then reports "Event loop is closed" as
  an unraisable exception. On a slow machine that happens before the failure
  reaches restore_newest (CI saw the tracebacks), so the filter must already
  be in place when the first restore starts."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  monkeypatch.setattr(checkpoints, "_QUIET", False)

  def abandoned_read():  # a read completing into the closed loop, in a thread
    promise, future = ts.Promise.new()

    def call_soon_threadsafe(_):
      raise RuntimeError("Event loop is closed")
    future.add_done_callback(call_soon_threadsafe)
    t = threading.Thread(target=lambda: promise.set_result(0))
    t.start()
    t.join()

  def restore_step(s):
    if s == 2:
      abandoned_read()  # before the failure propagates
      raise OSError("OUT_OF_RANGE: a truncated file")
    sys.unraisablehook(types.SimpleNamespace(  # anything else: reported
        exc_type=ValueError, exc_value=ValueError("x"), object=None,
        exc_traceback=None, err_msg=None))
    return "params"

  class Manager:
    directory = tmp_path

    def all_steps(self):
      return [1, 2]

    def reload(self):
      pass

  for s in ("1", "2"):
    os.makedirs(tmp_path / s)
  assert checkpoints.restore_newest(Manager(), restore_step) == ("params", 1)
  assert [type(u.exc_value) for u in seen] == [ValueError], seen
  assert len(damaged_warnings()) == 1
  assert sorted(os.listdir(tmp_path)) == ["1", "2.damaged"]


def test_failed_reads_nobody_awaited_are_not_logged_but_other_errors_are(
    caplog, monkeypatch):
  """The reads of a failed restore that failed too finish as asyncio tasks
  whose exception nobody retrieves; when such a task is collected asyncio
  logs "Task exception was never retrieved" with a traceback (CI saw it in
  the resumed run's stderr). Those from Orbax's read functions are dropped;
  an unretrieved error anywhere else is still logged."""
  import asyncio  # pylint: disable=g-import-not-at-top
  import gc  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(checkpoints, "_QUIET", False)
  monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
  asyncio_log = logging.getLogger("asyncio")
  monkeypatch.setattr(asyncio_log, "filters", list(asyncio_log.filters))
  checkpoints._quiet_abandoned_reads()  # pylint: disable=protected-access
  fake_orbax = os.path.join(os.sep, "venv", "orbax", "checkpoint", "ser.py")
  ns = {}
  exec(compile("async def _read_shard():\n"  # pylint: disable=exec-used
               "  raise ValueError('OUT_OF_RANGE: a truncated file')\n"
               "async def _write_shard():\n"
               "  raise ValueError('ENOSPC: disk full')\n",
               fake_orbax, "exec"), ns)

  async def elsewhere():
    raise ValueError("not a checkpoint read")

  async def wrapped_read():  # raised from the read, as Orbax re-raises it
    try:
      await ns["_read_shard"]()
    except ValueError as e:
      raise RuntimeError("Encountered error while reading array") from e

  def unretrieved(coro_fn):
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro_fn())
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    assert task.done()  # failed; asking for its exception would retrieve it
    del task
    gc.collect()

  caplog.set_level(logging.ERROR, logger="asyncio")
  for fn in (ns["_read_shard"], wrapped_read, elsewhere, ns["_write_shard"]):
    unretrieved(fn)
  logged = [str(r.exc_info[1]) for r in caplog.records
            if r.name == "asyncio" and r.exc_info]
  assert logged == ["not a checkpoint read", "ENOSPC: disk full"], logged


def test_a_checkpoint_of_another_shape_is_a_config_error_not_damage(tmp_path):
  _save_steps(tmp_path, (10, 20))
  wrong = dict(ABSTRACT, w=jax.ShapeDtypeStruct((64, 128), jnp.float32))
  with pytest.raises(errors.CheckpointError,
                     match=r"checkpoint 20 .*does not match.*\['w'\]"):
    checkpoints.restore_params(str(tmp_path), wrong)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]


# -------------------------------------------------------- lock, signals


def _dead_pid():
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def _write_lock(workdir, host, pid):
  os.makedirs(workdir, exist_ok=True)
  with open(layout.Layout(workdir).lock, "w") as f:
    json.dump({"host": host, "pid": pid, "since": "earlier"}, f)


def test_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(
    tmp_path, caplog):
  import socket  # pylint: disable=g-import-not-at-top
  with lock.workdir_lock(str(tmp_path)):
    with open(layout.Layout(tmp_path).lock) as f:
      assert json.load(f)["pid"] == os.getpid()
    with pytest.raises(errors.WorkdirLockedError,
                       match=f"in use by process {os.getpid()}"):
      lock.acquire(str(tmp_path))
  assert not os.path.exists(layout.Layout(tmp_path).lock)  # released
  # A stale lock of a dead process on this host: taken over, with a warning.
  dead = _dead_pid()
  _write_lock(tmp_path, socket.gethostname(), dead)
  caplog.set_level(logging.WARNING, logger="sparse_circuits")
  with lock.workdir_lock(str(tmp_path)):
    pass
  assert any(f"process {dead}" in r.getMessage() and "taking over" in
             r.getMessage() for r in caplog.records)
  # Another host's owner cannot be checked: refused, with the way out.
  _write_lock(tmp_path, "elsewhere", dead)
  with pytest.raises(errors.WorkdirLockedError, match="'elsewhere'") as e:
    lock.acquire(str(tmp_path))
  assert "delete" in e.value.hint


def test_stop_request_turns_the_first_signal_into_a_flag():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.StopRequest() as stop:
    assert not stop.requested(None, 1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested(None, 2) and stop.signal_name == "SIGTERM"
    # A second signal would take its usual course.
    assert signal.getsignal(signal.SIGTERM) is before
  assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------- corpus


def test_unreadable_binary_and_empty_sources(tmp_path):
  code = tmp_path / "code"
  code.mkdir()
  (code / "ok.py").write_text("x = 1\n")
  (code / "blob.py").write_bytes(b"\x00\x01")
  os.symlink(tmp_path / "nowhere", code / "gone.py")  # unreadable
  only_bad = tmp_path / "bad"
  only_bad.mkdir()
  (only_bad / "blob.py").write_bytes(b"\x00binary")
  no_py = tmp_path / "notes"
  no_py.mkdir()
  (no_py / "a.txt").write_text("text")
  config = config_lib.base_config()
  config.data.sources = (str(code),)
  corpus = corpus_lib.Corpus(config.data)
  assert [d.text for d in corpus] == ["x = 1\n"]
  assert corpus.stats.as_dict()["skipped"] == {"binary": 1, "unreadable": 1}
  config.data.sources = (str(code), str(only_bad))
  with pytest.raises(errors.DataError,
                     match=f"'{only_bad}' yields no text.*binary 1"):
    list(corpus_lib.Corpus(config.data))
  config.data.sources = (str(no_py),)
  with pytest.raises(errors.DataError, match="holds no .py file"):
    corpus_lib.Corpus(config.data)


# ------------------------------------------------------- the command line


def _main(*args):
  return subprocess.run(
      [sys.executable, "-m", "sparse_circuits.main", "--config=configs/tiny.py",
       *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def _one_line_error(r):
  assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  lines = r.stderr.strip().splitlines()
  assert lines[-1].startswith("error: "), lines
  assert not [l for l in lines if "shutting down" in l]
  return lines[-1]


@pytest.mark.slow
def test_known_errors_print_one_line_and_exit_2(tmp_path):
  line = _one_line_error(_main("--mode=train", f"--workdir={tmp_path}",
                               "--config.train.num_steps=0"))
  assert line == "error: config.train.num_steps: must be positive", line
  line = _one_line_error(_main("--mode=eval", f"--workdir={tmp_path}"))
  assert "no checkpoint in" in line and "hint: train first" in line, line
  busy = tmp_path / "busy"
  with lock.workdir_lock(str(busy)):
    line = _one_line_error(_main("--mode=train", f"--workdir={busy}"))
  assert f"in use by process {os.getpid()}" in line, line


@pytest.mark.slow
def test_own_corpus_from_the_command_line(tmp_path, tiny_data):
  """Several sources as a tuple; bad files counted in data_summary.json."""
  a, b = tmp_path / "a", tmp_path / "b"
  a.mkdir()
  b.mkdir()
  for i in range(3):
    (a / f"m{i}.py").write_text(f"def f{i}(x):\n  return x * {i}\n" * 20)
  (a / "latin1.py").write_bytes("# caf\xe9\nx = 'Jos\xe9'\n".encode("latin-1"))
  (a / "blob.py").write_bytes(b"\x00\x01\x02")
  os.symlink(tmp_path / "nowhere", a / "gone.py")
  (b / "lib.py").write_text("import os\nprint(os.sep)\n" * 10)
  work = tmp_path / "work"
  r = _main("--mode=data", f"--workdir={work}",
            f"--config.data.sources=('{a}', '{b}/*.py')",
            f"--config.data.tokenizer_dir={tiny_data[1].tokenizer_dir}")
  assert r.returncode == 0, r.stderr[-3000:]
  with open(work / "data_summary.json") as f:
    s = json.load(f)
  assert s["sources"] == [str(a), f"{b}/*.py"]
  assert s["files"] == 5 and s["tokens"] > 100, s
  assert s["skipped"] == {"binary": 1, "unreadable": 1}, s
  assert s["decoded_with_replacement"] == 1


@pytest.mark.parametrize("arg, want", [
    ("/my/code", ("/my/code",)),
    ("('/a', '/b/**/*.py')", ("/a", "/b/**/*.py")),
    ('("stdlib",)', ("stdlib",)),
])
def test_data_sources_override_forms(arg, want):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  argv = ["main", f"--config={REPO}/configs/tiny.py",
          f"--config.data.sources={arg}"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
  fv(argv)
  assert fv.config.data.sources == want
  config_lib.validate(fv.config)


def test_a_result_file_is_written_whole_or_not_at_all(tmp_path):
  """circuit.json, eval_summary.json, ...: a write that fails (an object json
  cannot encode; text the file cannot encode) leaves the previous document
  as it was, and no temporary file."""
  from sparse_circuits import reporting  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "circuits" / "t" / "circuit.json")
  reporting.write_json(path, {"nodes": [1, 2], "ok": True})
  with pytest.raises(TypeError):
    reporting.write_json(path, {"nodes": [1, 2, 3], "bad": object()})
  with open(path) as f:
    assert json.load(f) == {"nodes": [1, 2], "ok": True}
  with pytest.raises(UnicodeEncodeError):
    reporting.write_text(path, '{"nodes": "\ud800"}')  # a lone surrogate
  with open(path) as f:
    assert json.load(f) == {"nodes": [1, 2], "ok": True}
  assert os.listdir(os.path.dirname(path)) == ["circuit.json"]

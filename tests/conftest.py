"""Shared fixtures: a small tokenizer and token shards, built once a session.

The session compiles many programs more than once: every command-line test
starts fresh interpreters on the same tiny configs (a run, its resume, its
crash and restart), and several tests build the same step. JAX's persistent
compilation cache in a directory of this session's own lets each of them
compile once; it must be set before JAX is imported, and subprocesses
inherit it. A cache the user set already is used as it is.
"""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="sparse_circuits_tests_jax_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from sparse_circuits import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from sparse_circuits import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from sparse_circuits import hostmem  # pylint: disable=g-import-not-at-top,wrong-import-position

hostmem.keep_freed_memory()  # as the entry points do: fewer page faults


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
  """(config, DataInfo) for the tiny config on ~2.5 MB of the stdlib (~2 s)."""
  config = config_lib.base_config("tiny")
  config.data.max_corpus_bytes = 2_500_000
  config.data.eval_fraction = 0.03  # enough held-out windows for eval tests
  info = data.prepare(config, str(tmp_path_factory.mktemp("tiny_data")))
  return config, info

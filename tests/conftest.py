"""Shared fixtures: a small tokenizer and token shards, built once a session."""

import pytest

from sparse_circuits import config_lib
from sparse_circuits import data
from sparse_circuits import hostmem

hostmem.keep_freed_memory()  # as the entry points do: fewer page faults


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
  """(config, DataInfo) for the tiny config on ~2.5 MB of the stdlib (~2 s)."""
  config = config_lib.base_config("tiny")
  config.data.max_corpus_bytes = 2_500_000
  config.data.eval_fraction = 0.03  # enough held-out windows for eval tests
  info = data.prepare(config, str(tmp_path_factory.mktemp("tiny_data")))
  return config, info

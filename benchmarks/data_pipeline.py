"""Data benchmark: `python -m benchmarks.data_pipeline`.

Times building the tokenizer and token shards from the full standard library
in a fresh directory (the cost a first `--mode=data` run pays), then how fast
the grain pipeline delivers tiny-config batches (32 x 129), from RAM and
streamed through tensorstore as it would be from a bucket.
"""

import tempfile
import time

from absl import app

from sparse_circuits import config_lib
from sparse_circuits import data


def _rate(config, info, seconds: float = 3.0) -> tuple[float, float]:
  it = data.train_iterator(config, info, 0, 1)
  batch = next(it)
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(it)
    n += 1
  elapsed = time.perf_counter() - start
  return n / elapsed, n * batch.size / elapsed


def main(argv):
  del argv
  config = config_lib.base_config("tiny")
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    info = data.prepare(config, workdir)
    build = time.perf_counter() - start
    s = info.summary
    print(f"build: {build:.1f} s for tokenizer + shards of {s['files']} files,"
          f" {s['bytes'] / 1e6:.1f} MB -> {s['tokens'] / 1e6:.2f}M tokens")
    for label, in_memory in (("RAM", config.data.in_memory_max_bytes),
                             ("tensorstore", 0)):
      config.data.in_memory_max_bytes = in_memory
      batches, tokens = _rate(config, info)
      print(f"pipeline ({label}): {batches:,.0f} batches/s of "
            f"{config.train.batch_size}x{config.model.block_size + 1} = "
            f"{tokens / 1e6:.1f}M tokens/s")


if __name__ == "__main__":
  app.run(main)

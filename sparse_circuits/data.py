"""Token shards on disk and the grain pipeline that feeds the train step.

`prepare` turns the corpus into two flat uint16 token arrays (train and
held-out; documents joined by `<|endoftext|>`) under WORKDIR/data, next to the
tokenizer and a manifest. It rebuilds only when the manifest says an input
changed (corpus fingerprint, tokenizer hash, settings).

Storage is a tensorstore zarr3 array per split: tensorstore is already a
dependency (Orbax writes with it), the same spec serves a local path and a
`gs://` bucket, it reads any token range by fetching only the 1M-token
(2 MiB) chunks it touches (kept in a cache pool), and it is written chunk by
chunk, so a corpus never has to fit in RAM. A memmap cannot read from a
bucket, and ArrayRecord stores records, not a token stream to cut windows
from. A split that fits `config.data.in_memory_max_bytes` is read into RAM
once, since numpy fancy indexing is ~50x faster than a tensorstore read per
batch.

The pipeline is a `grain.MapDataset` over batch indices, so it is
deterministic and its state is one integer: each epoch cuts the token stream
into windows of block_size + 1 at a seeded offset and permutes them (a new
permutation each epoch); global batch b is the next batch_size windows of
that order and JAX process p reads only its rows [p*B/P, (p+1)*B/P), so the
global batch is the same whatever the number of processes.
"""

import dataclasses
import hashlib
import json
import os
import sys
import time

from absl import logging
from etils import epath
import grain
import numpy as np
import tensorstore as ts
import tqdm

from sparse_circuits import corpus as corpus_lib
from sparse_circuits import layout
from sparse_circuits import reporting
from sparse_circuits import tokenizer as tokenizer_lib
from sparse_circuits.errors import DataError

_log = reporting.get(__name__)

_FORMAT = 1           # bump when the shard layout changes
_CHUNK = 1 << 20      # tokens per zarr chunk and per write
_ENCODE_BATCH = 256   # documents per tiktoken batch call


@dataclasses.dataclass(frozen=True)
class DataInfo:
  tokenizer_dir: str
  train_path: str
  eval_path: str
  summary: dict


# ------------------------------------------------------------------- shards


def _kvstore(path) -> str:
  path = str(path)
  return path if "://" in path else "file://" + os.path.abspath(path)


def _open(path, **kwargs) -> ts.TensorStore:
  return ts.open({"driver": "zarr3", "kvstore": _kvstore(path) + "/"},
                 **kwargs).result()


class _Writer:
  """Appends tokens to a zarr3 array one chunk at a time."""

  def __init__(self, path):
    self._store = _open(path, create=True, delete_existing=True,
                        dtype=ts.uint16, shape=[0],
                        chunk_layout=ts.ChunkLayout(chunk_shape=[_CHUNK]))
    self._pending, self._n_pending, self.size = [], 0, 0

  def append(self, ids: list[int]) -> None:
    self._pending.append(np.asarray(ids, np.uint16))
    self._n_pending += len(ids)
    if self._n_pending >= _CHUNK:
      self._flush()

  def _flush(self) -> None:
    if not self._n_pending:
      return
    block = np.concatenate(self._pending)
    end = self.size + len(block)
    self._store = self._store.resize(exclusive_max=[end]).result()
    self._store[self.size:end].write(block).result()
    self.size, self._pending, self._n_pending = end, [], 0

  def close(self) -> int:
    self._flush()
    return self.size


def _read_all(path) -> np.ndarray:
  return _open(path, open=True).read().result()


class _Tokens:
  """A token split, in RAM if it fits, else read per batch via tensorstore."""

  def __init__(self, path, in_memory_max_bytes: int):
    store = _open(path, open=True, context=ts.Context(
        {"cache_pool": {"total_bytes_limit": 64 * _CHUNK}}))
    self.size = store.shape[0]
    self.in_memory = 2 * self.size <= in_memory_max_bytes
    self._array = store.read().result() if self.in_memory else None
    self._store = store

  def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
    idx = np.asarray(starts, np.int64)[:, None] + np.arange(length)
    if self._array is not None:
      return self._array[idx].astype(np.int32)
    return self._store.vindex[idx].read().result().astype(np.int32)


# ------------------------------------------------------------------ prepare


def _tokenizer_recipe(config) -> str:
  """What, besides the corpus, decides the tokenizer we would train."""
  return hashlib.sha256(json.dumps(
      [tokenizer_lib.PATTERN, tokenizer_lib.REQUIRED_TOKENS,
       tokenizer_lib.VOCAB_SIZE, config.data.tokenizer_max_bytes]).encode()
                        ).hexdigest()


def _train_texts(corpus, max_bytes: int):
  """Train-split documents for the BPE, up to max_bytes (0 = all)."""
  n = 0
  for doc in corpus:
    if doc.heldout:
      continue
    yield doc.text
    n += len(doc.text)
    if max_bytes and n >= max_bytes:
      return


def _load_manifest(path: epath.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


def manifest_tokenizer_dir(data_dir, manifest: dict) -> str:
  """The tokenizer a run's data was built with: its own (DATA/tokenizer,
  wherever the workdir now is) or the external one the manifest names.
  Manifests written before `tokenizer_own` stored the own one by a path
  relative to the working directory of the time: it counts as own when it
  ends in data/tokenizer and the run has that folder."""
  data_dir = epath.Path(data_dir)
  stored = manifest.get("tokenizer_dir") or ""
  own = manifest.get("tokenizer_own")
  if own is None:
    own = not stored or (epath.Path(stored).parts[-2:] == ("data", "tokenizer")
                         and (data_dir / "tokenizer").exists())
  return str(data_dir / "tokenizer") if own else stored


def prepare(config, workdir, reuse: bool = False) -> DataInfo:
  """Builds (or reuses) the tokenizer and token shards under WORKDIR/data.

  `reuse=True` is for a run that already has checkpoints: its model was
  trained with the tokenizer on disk, so that one is used as it is even if
  the code or corpus changed since (a new tokenizer would not match it).
  """
  data_dir = epath.Path(workdir) / "data"
  data_dir.mkdir(parents=True, exist_ok=True)
  manifest_path = data_dir / "manifest.json"
  old = _load_manifest(manifest_path)
  train_path, eval_path = data_dir / "train.zarr", data_dir / "eval.zarr"
  if reuse and old and train_path.exists():
    tok_dir = manifest_tokenizer_dir(data_dir, old)
    if not (epath.Path(tok_dir) / tokenizer_lib.ENCODER_FILE).exists():
      raise DataError(f"{data_dir} was built with the tokenizer in {tok_dir}, "
                      "which is missing", hint="point "
                      "--config.data.tokenizer_dir at a copy of it")
    if tokenizer_lib.load(tok_dir).sha256 != old["tokenizer_sha256"]:
      raise DataError(f"{tok_dir} changed since this run's data was built")
    return DataInfo(tok_dir, str(train_path), str(eval_path),
                    dict(old["summary"], rebuilt=False))
  corpus = corpus_lib.Corpus(config.data)
  fingerprint = corpus.fingerprint()
  start = time.time()

  own = not config.data.tokenizer_dir
  # An external tokenizer is recorded by its absolute path, the run's own
  # relative to the data folder: a run stays readable from any working
  # directory and after its workdir is moved.
  tok_dir = (str(data_dir / "tokenizer") if own
             else os.path.abspath(config.data.tokenizer_dir))
  recipe = _tokenizer_recipe(config) if own else "external"
  tok_fresh = (old.get("corpus_fingerprint") == fingerprint
               and old.get("tokenizer_recipe") == recipe
               and (epath.Path(tok_dir) / tokenizer_lib.ENCODER_FILE).exists())
  if own and not tok_fresh:
    manifest_path.unlink(missing_ok=True)  # stale from here on
    logging.info("training the BPE tokenizer on %s", corpus.sources)
    tok = tokenizer_lib.train(
        _train_texts(corpus, config.data.tokenizer_max_bytes), tok_dir)
    forced = tok.n_forced_merges
  else:
    tok = tokenizer_lib.load(tok_dir)
    forced = old.get("summary", {}).get("forced_merges")
  if tok.vocab_size != config.model.vocab_size:
    raise DataError(f"{tok_dir} has {tok.vocab_size} ids but "
                    f"config.model.vocab_size is {config.model.vocab_size}")

  key = {"format": _FORMAT, "corpus_fingerprint": fingerprint,
         "tokenizer_recipe": recipe, "tokenizer_sha256": tok.sha256}
  if all(old.get(k) == v for k, v in key.items()) and train_path.exists():
    return DataInfo(tok_dir, str(train_path), str(eval_path),
                    dict(old["summary"], rebuilt=False))

  manifest_path.unlink(missing_ok=True)
  counts = _write_shards(corpus, tok, train_path, eval_path)
  missing = [s for s in tokenizer_lib.REQUIRED_TOKENS
             if len(tok.encode(s)) != 1]
  if missing:  # only possible with a tokenizer_dir from elsewhere
    logging.warning("%s: not single tokens: %s", tok_dir, missing)
  summary = {
      **corpus.stats.as_dict(), **counts,
      "bytes_per_token": corpus.stats.bytes / max(counts["tokens"], 1),
      "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
      "tokenizer_dir": str(tok_dir), "tokenizer_sha256": tok.sha256,
      "forced_merges": forced, "required_not_single": missing,
      "sources": list(corpus.sources), "build_seconds": time.time() - start,
  }
  manifest_path.write_text(json.dumps(
      {**key, "tokenizer_dir": str(tok_dir), "tokenizer_own": own,
       "summary": summary}, indent=1))
  return DataInfo(tok_dir, str(train_path), str(eval_path),
                  dict(summary, rebuilt=True))


def _write_shards(corpus, tok, train_path, eval_path) -> dict:
  """Tokenizes the corpus into the two splits, each doc followed by eot."""
  writers = {False: _Writer(train_path), True: _Writer(eval_path)}
  total = sum(os.path.getsize(i.path) for i in corpus.inputs
              if os.path.exists(i.path))
  total = min(total, corpus.max_corpus_bytes or total)
  n_text = 0
  with tqdm.tqdm(total=total, unit="B", unit_scale=True,
                 desc="tokenizing") as bar:
    batch = []

    def flush():
      nonlocal n_text
      for doc, ids in zip(batch, tok.encode_batch([d.text for d in batch])):
        n_text += len(ids)
        writers[doc.heldout].append(ids + [tok.eot_id])
      batch.clear()
      bar.update(corpus.stats.read_bytes - bar.n)

    for doc in corpus:
      batch.append(doc)
      if len(batch) == _ENCODE_BATCH:
        flush()
    flush()
  return {"tokens": n_text, "train_tokens": writers[False].close(),
          "eval_tokens": writers[True].close()}


def run(config, workdir) -> DataInfo:
  """`--mode=data`: prepare, write WORKDIR/data_summary.json, print it."""
  info = prepare(config, workdir)
  s = info.summary
  epath.Path(layout.Layout(workdir).data_summary).write_text(
      json.dumps(s, indent=1))
  skipped = ", ".join(f"{k} {v}" for k, v in s["skipped"].items()) or "none"
  _log.info(f"data: {s['files']} files ({s['heldout_files']} held out), "
        f"{s['bytes'] / 1e6:.1f} MB -> {s['tokens'] / 1e6:.2f}M tokens "
        f"({s['bytes_per_token']:.2f} bytes/token); skipped: {skipped}; "
        f"{s['decoded_with_replacement']} decoded with replacement; "
        f"vocab {s['vocab_size']} (eot {s['eot_id']}) in {info.tokenizer_dir}"
        + ("" if s["rebuilt"] else " [up to date, not rebuilt]"))
  return info


# ----------------------------------------------------------------- pipeline


class _TrainBatches:
  """Process `index`'s rows of global batch b (a grain source).

  Epoch e cuts the token stream into windows of `length` starting at a
  seeded offset in [0, length) and permutes them with a permutation seeded
  by (seed, e); global batch b is windows [b*B, (b+1)*B) of that order
  (B = batch * count) and process `index` reads rows [index*batch,
  (index+1)*batch) of it. Windows never overlap within an epoch, so
  processes see disjoint data, and the global batch does not depend on the
  process count. Done in numpy per batch: grain's per-element shuffle costs
  ~50 us a window.
  """

  def __init__(self, tokens, length, batch, seed, index, count):
    self.tokens, self.length, self.batch = tokens, length, batch
    self.seed, self.index, self.count = seed, index, count
    # With an offset in [0, length) the last window must still fit.
    self.n_windows = (tokens.size - length + 1) // length
    if self.n_windows < batch * count:
      raise DataError(f"the train split has {tokens.size} tokens: fewer than "
                      f"{batch * count} windows of {length} (one global "
                      "batch)")
    self._epochs = {}

  def __len__(self):
    return sys.maxsize

  def _epoch(self, e: int) -> tuple[int, np.ndarray]:
    if e not in self._epochs:
      rng = np.random.default_rng([self.seed, e])
      # A batch straddles at most two epochs: keep the neighbours only.
      self._epochs = {k: v for k, v in self._epochs.items() if abs(k - e) == 1}
      self._epochs[e] = (int(rng.integers(self.length)),
                         rng.permutation(self.n_windows))
    return self._epochs[e]

  def __getitem__(self, b: int) -> np.ndarray:
    rows = (b * self.count + self.index) * self.batch + np.arange(self.batch)
    epoch, j = np.divmod(rows, self.n_windows)
    starts = np.empty(self.batch, np.int64)
    for e in np.unique(epoch):
      offset, perm = self._epoch(int(e))
      m = epoch == e
      starts[m] = perm[j[m]] * self.length + offset
    return self.tokens.windows(starts, self.length)


def train_iterator(config, info: DataInfo, process_index: int | None = None,
                   process_count: int | None = None):
  """Infinite iterator of int32 [batch_size // process_count, block_size + 1].

  Deterministic given config.data.seed; save and restore it with
  `get_state`/`set_state` or through Orbax with `checkpoint_args`.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
  batch = config.train.batch_size
  if batch % process_count:
    raise DataError(f"train.batch_size {batch} is not divisible by the "
                    f"{process_count} processes")
  tokens = _Tokens(info.train_path, config.data.in_memory_max_bytes)
  source = _TrainBatches(tokens, config.model.block_size + 1,
                         batch // process_count, config.data.seed,
                         process_index, process_count)
  # Threads only pay off when a batch waits on storage; in RAM they would
  # just contend for the GIL.
  return iter(grain.MapDataset.source(source).to_iter_dataset(
      grain.ReadOptions(num_threads=0 if tokens.in_memory else 8,
                        prefetch_buffer_size=16)))


def checkpoint_args(it, restore: bool = False):
  """The iterator's entry of an `ocp.args.Composite`, for save or restore.

    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=checkpoint_args(it)))
    mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=checkpoint_args(it, restore=True)))
  """
  from grain import checkpoint  # pylint: disable=g-import-not-at-top
  return (checkpoint.CheckpointRestore(it) if restore
          else checkpoint.CheckpointSave(it))


def eval_batches(config, info: DataInfo, num_batches: int) -> list[np.ndarray]:
  """The same `num_batches` held-out batches on every call and every process.

  Consecutive windows from the start of the split, full global batch size,
  wrapping around when the split is short.
  """
  batch, length = config.train.batch_size, config.model.block_size + 1
  tokens = _read_all(info.eval_path)
  n = len(tokens) // length
  if n == 0:
    raise DataError(f"the held-out split has {len(tokens)} tokens, fewer "
                    f"than one window of {length}: raise "
                    "config.data.eval_fraction")
  windows = tokens[:n * length].reshape(n, length).astype(np.int32)
  order = np.arange(num_batches * batch) % n
  return list(windows[order].reshape(num_batches, batch, length))

"""The training text: Python source read from disk, never downloaded.

Sources (`config.data.sources`, read in the listed order, each in sorted path
order so every machine sees the same stream):
  "stdlib"         every .py file of the running interpreter's standard library
  "site-packages"  every .py file of the installed packages
  a directory      every .py file under it
  a glob           every file it matches (`**` recurses)
  x.jsonl          one document per line, field `config.data.text_field`
  x.parquet        one document per row, column `config.data.text_field`
                   (needs pyarrow, which we do not depend on)

A bad file never stops the run: binary (NUL bytes), empty, oversized and
unreadable files, exact duplicates and malformed records are skipped, text
that is not UTF-8 (e.g. latin-1) is decoded with replacement characters (a
few such files sit in the standard library's tests), and every case is
counted in `Corpus.stats` (and so in data_summary.json). A bad source does
stop it, naming the source: one that does not exist or matches no file is a
ConfigError, one whose files yield no text at all a DataError.

The held-out split is a hash of the document's name (source label + relative
path), so it is stable across machines, runs and corpus growth.
"""

import collections
import dataclasses
import glob
import hashlib
import json
import os
import sysconfig
from typing import Iterator

from sparse_circuits.errors import ConfigError
from sparse_circuits.errors import DataError
from sparse_circuits.errors import MissingDependencyError

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclasses.dataclass(frozen=True)
class Document:
  name: str     # stable id, e.g. "stdlib/json/decoder.py" or "x.jsonl:12"
  text: str
  heldout: bool


@dataclasses.dataclass
class Stats:
  files: int = 0             # documents kept
  heldout_files: int = 0
  bytes: int = 0             # UTF-8 bytes of the kept text
  read_bytes: int = 0        # input bytes consumed (for a progress bar)
  decoded_with_replacement: int = 0
  capped: bool = False       # max_corpus_bytes cut the stream short
  skipped: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["skipped"] = dict(sorted(self.skipped.items()))
    del d["read_bytes"]
    return d


@dataclasses.dataclass(frozen=True)
class _Input:
  """One file to read: code (one document) or records (jsonl / parquet)."""
  name: str
  path: str
  kind: str  # "code" | "jsonl" | "parquet"


def _walk_py(root: str, label: str) -> list[_Input]:
  out = []
  for d, dirs, files in os.walk(root):
    dirs[:] = [x for x in dirs if x not in _SKIP_DIRS]
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(d, f)
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        out.append(_Input(f"{label}/{rel}", path, "code"))
  return sorted(out, key=lambda i: i.name)


def _kind(path: str) -> str:
  return {".jsonl": "jsonl", ".parquet": "parquet"}.get(
      os.path.splitext(path)[1].lower(), "code")


def _resolve(source: str) -> list[_Input]:
  if source == "stdlib":
    return _walk_py(sysconfig.get_paths()["stdlib"], "stdlib")
  if source == "site-packages":
    roots = dict.fromkeys(sysconfig.get_paths()[k]
                          for k in ("purelib", "platlib"))
    # purelib and platlib are usually one directory: read it once.
    found = {i for root in roots for i in _walk_py(root, "site-packages")}
    return sorted(found, key=lambda i: (i.name, i.path))
  if os.path.isdir(source):
    found = _walk_py(source, source.rstrip("/"))
    if not found:
      raise DataError(f"config.data.sources: directory {source!r} holds no "
                      ".py file", hint="name other files with a glob, e.g. "
                      f"'{source.rstrip('/')}/**/*.txt'")
    return found
  if os.path.isfile(source):
    return [_Input(source, source, _kind(source))]
  if any(c in source for c in "*?["):
    paths = sorted(p for p in glob.glob(source, recursive=True)
                   if os.path.isfile(p))
    if paths:
      return [_Input(p, p, _kind(p)) for p in paths]
  raise ConfigError(f"config.data.sources: {source!r} is not 'stdlib', "
                    "'site-packages', a directory, a file or a matching glob")


def _is_heldout(name: str, fraction: float) -> bool:
  h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
  return h < fraction * 2**64


class Corpus:
  """The documents of `config.data`, in a fixed order; iterate to read."""

  def __init__(self, data_config):
    self.sources = list(data_config.sources)
    self.text_field = data_config.text_field
    self.max_file_bytes = int(data_config.max_file_bytes)
    self.max_corpus_bytes = int(data_config.max_corpus_bytes)
    self.eval_fraction = float(data_config.eval_fraction)
    self._by_source = [(s, _resolve(s)) for s in self.sources]
    self.inputs = [i for _, inputs in self._by_source for i in inputs]
    self.stats = Stats()

  def fingerprint(self) -> str:
    """Cheap change detector: the settings plus every input's size and mtime."""
    h = hashlib.sha256(json.dumps(
        [self.sources, self.text_field, self.max_file_bytes,
         self.max_corpus_bytes, self.eval_fraction]).encode())
    for i in self.inputs:
      try:
        st = os.stat(i.path)
        h.update(f"{i.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
      except OSError:
        h.update(f"{i.name}\0missing\n".encode())
    return h.hexdigest()

  def __iter__(self) -> Iterator[Document]:
    """Yields the kept documents; refills `self.stats` on every pass."""
    self.stats = stats = Stats()
    seen = set()
    for source, inputs in self._by_source:
      has_text, before = False, collections.Counter(stats.skipped)
      for name, text in self._raw(inputs):
        encoded = text.encode("utf-8")
        reason = self._reject(text, encoded)
        has_text = has_text or reason is None
        if reason is None:
          digest = hashlib.sha256(encoded).digest()
          reason = "duplicate" if digest in seen else None
          seen.add(digest)
        if reason:
          stats.skipped[reason] += 1
          continue
        if self.max_corpus_bytes and (
            stats.bytes + len(encoded) > self.max_corpus_bytes):
          stats.capped = True
          return
        heldout = _is_heldout(name, self.eval_fraction)
        stats.files += 1
        stats.heldout_files += heldout
        stats.bytes += len(encoded)
        yield Document(name, text, heldout)
      if not has_text:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(
            (stats.skipped - before).items())) or "nothing"
        raise DataError(
            f"config.data.sources: {source!r} yields no text: none of its "
            f"{len(inputs)} file(s) holds any (skipped: {skipped})")

  def _reject(self, text: str, encoded: bytes) -> str | None:
    if not text.strip():
      return "empty"
    if len(encoded) > self.max_file_bytes:
      return "oversized"
    if "\0" in text:
      return "binary"
    return None

  def _decode(self, data: bytes) -> str:
    try:
      return data.decode("utf-8")
    except UnicodeDecodeError:
      self.stats.decoded_with_replacement += 1
      return data.decode("utf-8", errors="replace")

  def _raw(self, inputs) -> Iterator[tuple[str, str]]:
    """(name, text) of every document before the checks, unreadable skipped."""
    for i in inputs:
      try:
        if i.kind == "code":
          size = os.path.getsize(i.path)
          if size > self.max_file_bytes:  # don't even read it
            self.stats.skipped["oversized"] += 1
            self.stats.read_bytes += size
            continue
          with open(i.path, "rb") as f:
            data = f.read()
          self.stats.read_bytes += len(data)
          if b"\0" in data:
            self.stats.skipped["binary"] += 1
            continue
          yield i.name, self._decode(data)
        else:
          yield from (self._jsonl(i) if i.kind == "jsonl" else
                      self._parquet(i))
      except OSError:
        self.stats.skipped["unreadable"] += 1

  def _jsonl(self, i: _Input) -> Iterator[tuple[str, str]]:
    with open(i.path, "rb") as f:
      for n, line in enumerate(f):
        self.stats.read_bytes += len(line)
        if not line.strip():
          continue
        try:
          text = json.loads(self._decode(line))[self.text_field]
        except (ValueError, KeyError, TypeError):
          text = None
        if not isinstance(text, str):
          self.stats.skipped["bad_record"] += 1
          continue
        yield f"{i.name}:{n}", _clean(text, self.stats)

  def _parquet(self, i: _Input) -> Iterator[tuple[str, str]]:
    try:
      import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise MissingDependencyError(f"reading {i.path} needs pyarrow: "
                                   "`pip install pyarrow`") from e
    f = pq.ParquetFile(i.path)
    if self.text_field not in f.schema_arrow.names:
      raise DataError(f"{i.path} has no column {self.text_field!r} "
                      f"(config.data.text_field); it has "
                      f"{f.schema_arrow.names}")
    n = 0
    for batch in f.iter_batches(columns=[self.text_field]):
      for text in batch.column(0).to_pylist():
        if isinstance(text, bytes):
          text = self._decode(text)
        if isinstance(text, str):
          self.stats.read_bytes += len(text)
          yield f"{i.name}:{n}", _clean(text, self.stats)
        else:
          self.stats.skipped["bad_record"] += 1
        n += 1


def _clean(text: str, stats: Stats) -> str:
  """JSON can carry lone surrogates, which are not text: replace them."""
  try:
    text.encode("utf-8")
    return text
  except UnicodeEncodeError:
    stats.decoded_with_replacement += 1
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")

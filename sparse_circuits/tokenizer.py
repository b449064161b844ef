"""Byte-level BPE with 2048 ids in the authors' `tinypython_2k` file format.

Training uses the `tokenizers` library (fast, offline); encoding uses tiktoken
(about 10x faster, identical ids). The files are GPT-2 "data-gym" style:
`encoder.json` (byte-level unicode string -> id) and `vocab.bpe` (merges in
rank order), ids = ranks: the 256 single bytes first, then one id per merge,
`<|endoftext|>` last. The authors' own files load the same way.

The task suite compares the logits of single candidate tokens (`]]\\n` vs
`]\\n`, `'` vs `"`, ...), so `train` does not trust luck: it checks every
string of REQUIRED_TOKENS and, for any the BPE did not learn, gives up the
last learned merges to make room for merges that build it.
"""

import functools
import hashlib
import json
import math
import os
from typing import Iterable, Sequence

import regex
import tiktoken

from sparse_circuits.errors import DataError

# method.md §3: the authors' pre-tokenisation pattern. A token never crosses a
# pre-token boundary, so every required string must be one pre-token.
PATTERN = (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
EOT = "<|endoftext|>"
VOCAB_SIZE = 2048
ENCODER_FILE, MERGES_FILE = "encoder.json", "vocab.bpe"

# Strings that must each encode to exactly one token (task candidates and
# frequent code words). "\n" + indentation cannot be one: the pattern always
# splits "\n" from the spaces that follow it.
REQUIRED_TOKENS: tuple[str, ...] = (
    "'", '"', "]]\n", "]\n", ".add", " +=", ":", "\n", ":\n", " =", " in",
    " as", ")", "]", "}", " True", " False", " import", "self", "(self",
    " elif", " else", "else", "elif", "}\"", "):\n", " not", " is", " and",
    " or", " return", "return", " None", "None", ",", ".", "(", "[", "{",
    " for", " if", " while", " def", " class", " from", "from", "import",
    "'\n", "\"\n", "')\n", "\")\n", "')", "\")",
    # tasks/suite.py candidates
    ".append", " except", "(cls", ")\n", "}\n", "))\n", " ==", "':", "',",
    "\":", "\",", "   ", "       ", "           ", " name", " value", " size",
    " path", " data", " key", " mode", " text", " source", " count", " index",
    " default", " filename", " stream", "=None", " {", "():\n", " enumerate",
    " range", "r", "w")


@functools.cache
def _byte_to_unicode() -> dict[int, str]:
  """GPT-2's printable stand-in character for each byte (data-gym order)."""
  printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
  others = [b for b in range(256) if b not in printable]
  table = {b: chr(b) for b in printable}
  table.update({b: chr(256 + n) for n, b in enumerate(others)})
  return table


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
  return {c: b for b, c in _byte_to_unicode().items()}


def _to_unicode(b: bytes) -> str:
  table = _byte_to_unicode()
  return "".join(table[x] for x in b)


def _from_unicode(s: str) -> bytes:
  inverse = _unicode_to_byte()
  try:
    return bytes(inverse[c] for c in s)
  except KeyError as e:
    raise ValueError(f"{s!r} is not a byte-level BPE token string") from e


def pretokens(text: str) -> list[str]:
  return regex.findall(PATTERN, text)


class Tokenizer:
  """tiktoken encoder over data-gym files; `<|endoftext|>` in text is text."""

  n_forced_merges: int | None = None  # set by `train`: merges added by force

  def __init__(self, path: str, ranks: dict[bytes, int], eot_id: int,
               sha256: str):
    self.path = path
    self.sha256 = sha256
    self.eot_id = eot_id
    self._enc = tiktoken.Encoding(
        name=f"sparse_circuits_{sha256[:12]}", pat_str=PATTERN,
        mergeable_ranks=ranks, special_tokens={EOT: eot_id})
    self.vocab_size = self._enc.n_vocab

  def encode(self, text: str) -> list[int]:
    return self._enc.encode_ordinary(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._enc.encode_ordinary_batch(list(texts),
                                           num_threads=os.cpu_count() or 1)

  def decode(self, ids: Iterable[int]) -> str:
    return self._enc.decode([int(i) for i in ids])

  def token_bytes(self, token_id: int) -> bytes:
    return self._enc.decode_single_token_bytes(int(token_id))

  def token_str(self, token_id: int) -> str:
    return self.token_bytes(token_id).decode("utf-8", errors="replace")

  def single_token(self, s: str) -> int:
    ids = self.encode(s)
    if len(ids) != 1:
      pieces = [self.token_str(i) for i in ids]
      raise ValueError(f"{s!r} is not a single token: it encodes to {pieces}")
    return ids[0]

  def __repr__(self):
    return (f"Tokenizer({self.path!r}, vocab_size={self.vocab_size}, "
            f"eot_id={self.eot_id})")


def _read(directory: str) -> tuple[bytes, bytes]:
  from etils import epath  # pylint: disable=g-import-not-at-top
  d = epath.Path(directory)
  return (d / ENCODER_FILE).read_bytes(), (d / MERGES_FILE).read_bytes()


def load(directory: str) -> Tokenizer:
  """Loads `encoder.json` + `vocab.bpe` (ours or the authors' tinypython_2k).

  Reads the files itself rather than through tiktoken.load, whose cache is
  keyed by path and would serve a stale copy after a rebuild in place.
  """
  enc_bytes, merges_bytes = _read(directory)
  encoder = json.loads(enc_bytes)
  eot_id = encoder.pop(EOT, None)
  if eot_id is None:
    raise ValueError(f"{directory}/{ENCODER_FILE} has no {EOT} entry")
  encoder.pop("<|startoftext|>", None)
  ranks = {_from_unicode(k): v for k, v in encoder.items()}
  # tiktoken merges by the rank (= id) of the merged bytes, so ids must follow
  # the merge order of vocab.bpe for it to reproduce the BPE.
  lines = merges_bytes.decode("utf-8").split("\n")[1:]
  merged = [_from_unicode(a) + _from_unicode(b)
            for a, b in (ln.split() for ln in lines if ln.strip())]
  ids = [ranks.get(m, -1) for m in merged]
  if min(ids, default=0) < 0 or ids != sorted(ids):
    raise ValueError(f"{directory}: encoder.json ids do not follow the merge "
                     f"order of {MERGES_FILE}; not a data-gym BPE")
  return Tokenizer(str(directory), ranks, eot_id,
                   hashlib.sha256(enc_bytes + b"\0" + merges_bytes).hexdigest())


# ----------------------------------------------------------------- training


def _bpe(word: bytes, ranks: dict[tuple[bytes, bytes], int]) -> list[bytes]:
  """Plain BPE (the `tokenizers` semantics): merge the lowest-ranked pair."""
  parts = [bytes([b]) for b in word]
  while len(parts) > 1:
    rank, i = min((ranks.get(p, math.inf), i)
                  for i, p in enumerate(zip(parts, parts[1:])))
    if rank == math.inf:
      break
    parts[i:i + 2] = [parts[i] + parts[i + 1]]
  return parts


def _forced_merges(base: list[tuple[bytes, bytes]],
                   required: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
  """Merges to append to `base` so that each required string is one token.

  Builds each string from the pieces the BPE splits it into, left to right,
  so that the new merges fire in the same order under `tokenizers`' pairwise
  BPE and tiktoken's merge-by-rank.
  """
  ranks = {p: i for i, p in enumerate(base)}
  vocab = {bytes([b]) for b in range(256)} | {a + b for a, b in base}
  extra = []
  for s in required:
    if s in vocab:  # a whole pre-token in the vocabulary maps straight to it
      continue
    parts = _bpe(s, ranks)
    while len(parts) > 1:
      pair = next(((a, b) for a, b in zip(parts, parts[1:])
                   if a + b not in vocab), None)
      if pair is None:
        raise ValueError(f"cannot force {s!r}: pieces {parts} are stuck")
      ranks[pair] = len(ranks)
      vocab.add(pair[0] + pair[1])
      extra.append(pair)
      parts = _bpe(s, ranks)
  return extra


def _fit_merges(learned: list[tuple[bytes, bytes]], required: Sequence[bytes],
                n_merges: int) -> tuple[list[tuple[bytes, bytes]], int]:
  """Exactly n_merges merges: a prefix of `learned`, then the forced ones.

  BPE training is greedy, so a prefix of its merges is what a shorter run
  would have learned. Returns (merges, number of forced merges).
  """
  for n_base in range(min(n_merges, len(learned)), -1, -1):
    extra = _forced_merges(learned[:n_base], required)
    if n_base + len(extra) <= n_merges:
      break
  else:
    raise ValueError(f"the required tokens alone need {len(extra)} merges, "
                     f"more than the {n_merges} the vocabulary has")
  merges = learned[:n_base] + extra
  vocab = {bytes([b]) for b in range(256)} | {a + b for a, b in merges}
  for a, b in learned[n_base:]:  # fill any gap the forcing left
    if len(merges) == n_merges:
      break
    if a in vocab and b in vocab and a + b not in vocab:
      merges.append((a, b))
      vocab.add(a + b)
  if len(merges) != n_merges:
    raise DataError(f"the corpus yields only {len(merges)} BPE merges, "
                    f"{n_merges} are needed: train on more text",
                    hint="add sources (e.g. 'stdlib') or reuse a tokenizer "
                    "with data.tokenizer_dir")
  return merges, len(extra)


def _write(out_dir: str, merges: list[tuple[bytes, bytes]]) -> None:
  from etils import epath  # pylint: disable=g-import-not-at-top
  d = epath.Path(out_dir)
  d.mkdir(parents=True, exist_ok=True)
  # ids 0..255: single bytes in data-gym order (the key order of the table).
  encoder = {c: i for i, c in enumerate(_byte_to_unicode().values())}
  for a, b in merges:
    encoder[_to_unicode(a + b)] = len(encoder)
  encoder[EOT] = len(encoder)
  lines = ["#version: 0.2"] + [f"{_to_unicode(a)} {_to_unicode(b)}"
                               for a, b in merges]
  (d / ENCODER_FILE).write_text(json.dumps(encoder, ensure_ascii=False))
  (d / MERGES_FILE).write_text("\n".join(lines) + "\n")


def _hf_pre_tokenizer():
  from tokenizers import Regex, pre_tokenizers  # pylint: disable=g-import-not-at-top
  return pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def train(texts: Iterable[str], out_dir: str, *, vocab_size: int = VOCAB_SIZE,
          required: Sequence[str] = REQUIRED_TOKENS) -> Tokenizer:
  """Trains the BPE on `texts`, forces `required`, writes and loads it."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  bad = [s for s in required if pretokens(s) != [s]]
  if bad:
    raise ValueError(f"required tokens that the pattern splits (they can "
                     f"never be one token): {[(s, pretokens(s)) for s in bad]}")
  n_merges = vocab_size - 1 - 256  # the rest: 256 bytes and <|endoftext|>
  hf = tokenizers.Tokenizer(models.BPE())
  hf.pre_tokenizer = _hf_pre_tokenizer()
  hf.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=256 + n_merges, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  learned = [(_from_unicode(a), _from_unicode(b)) for a, b in (
      m.split(" ") if isinstance(m, str) else m
      for m in json.loads(hf.to_str())["model"]["merges"])]
  merges, n_forced = _fit_merges(learned, [s.encode() for s in required],
                                 n_merges)
  _write(out_dir, merges)
  tok = load(out_dir)
  tok.n_forced_merges = n_forced
  assert tok.vocab_size == vocab_size and tok.eot_id == vocab_size - 1
  for s in required:
    tok.single_token(s)  # raises, naming the pieces, if forcing failed
  return tok

"""Corpus, tokenizer, token shards and the grain pipeline (CPU, ~15 s)."""

import json
import os
import shutil
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from sparse_circuits import config_lib
from sparse_circuits import corpus as corpus_lib
from sparse_circuits import data
from sparse_circuits import tokenizer as tokenizer_lib


def _hf_tokenizer(directory: str):
  """The same files as a `tokenizers.Tokenizer`: an independent reference."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models  # pylint: disable=g-import-not-at-top
  enc_bytes, merges_bytes = tokenizer_lib._read(directory)  # pylint: disable=protected-access
  vocab = json.loads(enc_bytes)
  merges = [tuple(ln.split()) for ln in
            merges_bytes.decode("utf-8").split("\n")[1:] if ln.strip()]
  # ignore_merges: a pre-token that is itself in the vocabulary maps straight
  # to its id, as tiktoken does.
  hf = tokenizers.Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
  hf.pre_tokenizer = tokenizer_lib._hf_pre_tokenizer()  # pylint: disable=protected-access
  hf.decoder = decoders.ByteLevel()
  return hf


def _heldout_texts(info, n: int) -> list[str]:
  """The first n held-out documents, decoded back from the shard."""
  tok = tokenizer_lib.load(info.tokenizer_dir)
  tokens = data._read_all(info.eval_path)  # pylint: disable=protected-access
  ends = np.flatnonzero(tokens == tok.eot_id)[:n]
  starts = np.concatenate([[0], ends[:-1] + 1])
  return [tok.decode(tokens[a:b]) for a, b in zip(starts, ends)]


def _stdlib_texts():
  return [d.text for d in corpus_lib.Corpus(config_lib.base_config().data)]


@pytest.fixture(scope="module")
def tok(tiny_data):
  return tokenizer_lib.load(tiny_data[1].tokenizer_dir)


# ------------------------------------------------------------------- corpus


def _write_bad_corpus(root):
  code = b"def f(x):\n  return x + 1\n"
  files = {
      "good.py": code,
      "sub/dup.py": code,
      "sub/other.py": b"import os\nprint(os.sep)\n",
      "blob.py": b"\x00\x01\x02binary\x00",
      "latin1.py": "# caf\xe9\nname = 'Jos\xe9'\n".encode("latin-1"),
      "empty.py": b"",
      "blank.py": b"\n  \n",
      "big.py": b"x = 1\n" * 100,
      "notes.txt": b"not python, not read",
  }
  for name, content in files.items():
    os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
    with open(os.path.join(root, name), "wb") as f:
      f.write(content)


def test_corpus_counts_bad_files(tmp_path):
  root = str(tmp_path / "code")
  _write_bad_corpus(root)
  jsonl = tmp_path / "docs.jsonl"
  jsonl.write_text('{"text": "a = [1]\\n"}\n{"body": "x"}\nnot json\n'
                   '{"text": "def f(x):\\n  return x + 1\\n"}\n')
  config = config_lib.base_config()
  config.data.sources = [root, str(jsonl)]
  config.data.max_file_bytes = 500
  corpus = corpus_lib.Corpus(config.data)
  docs = list(corpus)
  names = [d.name for d in docs]
  assert names == [f"{root}/good.py", f"{root}/latin1.py",
                   f"{root}/sub/other.py", f"{jsonl}:0"]
  stats = corpus.stats.as_dict()
  assert stats["skipped"] == {"binary": 1, "duplicate": 2, "empty": 2,
                              "oversized": 1, "bad_record": 2}
  assert stats["decoded_with_replacement"] == 1
  assert stats["files"] == 4
  assert "\ufffd" in docs[1].text and "name = 'Jos" in docs[1].text
  assert [d.name for d in corpus] == names  # deterministic, stats refilled
  assert corpus.stats.as_dict() == stats


def test_corpus_cap_split_and_errors(monkeypatch, tmp_path):
  config = config_lib.base_config()
  config.data.max_corpus_bytes = 300_000
  corpus = corpus_lib.Corpus(config.data)
  docs = list(corpus)
  assert corpus.stats.capped and 0 < corpus.stats.bytes <= 300_000
  assert all(d.name.startswith("stdlib/") for d in docs)
  heldout = [corpus_lib._is_heldout(f"f{i}", 0.01) for i in range(20_000)]
  assert 0.007 < np.mean(heldout) < 0.013
  config.data.sources = [str(tmp_path / "nowhere")]
  with pytest.raises(ValueError, match="nowhere"):
    corpus_lib.Corpus(config.data)
  pq = tmp_path / "x.parquet"
  pq.write_bytes(b"PAR1")
  monkeypatch.setitem(sys.modules, "pyarrow", None)
  monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
  config.data.sources = [str(pq)]
  with pytest.raises(ImportError, match="pip install pyarrow"):
    list(corpus_lib.Corpus(config.data))


# ---------------------------------------------------------------- tokenizer


def test_vocabulary_and_eot(tok):
  assert tok.vocab_size == 2048 and tok.eot_id == 2047
  assert tok.token_str(2047) == "<|endoftext|>"
  ids = tok.encode("x = '<|endoftext|>'")  # ordinary text, not the special
  assert 2047 not in ids and tok.decode(ids) == "x = '<|endoftext|>'"
  assert len(tok.sha256) == 64 and os.path.isdir(tok.path)


def test_required_tokens_are_single(tok):
  for s in tokenizer_lib.REQUIRED_TOKENS:
    assert tokenizer_lib.pretokens(s) == [s], s
    assert tok.token_bytes(tok.single_token(s)) == s.encode()
  with pytest.raises(ValueError, match="not a single token"):
    tok.single_token("definitely not one token")


def test_roundtrip_200_stdlib_files(tok):
  texts = _stdlib_texts()
  sample = texts[::len(texts) // 200][:200]
  assert len(sample) == 200
  for text, ids in zip(sample, tok.encode_batch(sample)):
    assert tok.decode(ids) == text


def test_tiktoken_matches_tokenizers(tok):
  hf = _hf_tokenizer(tok.path)
  tricky = ["  x\r\n\r\n\t y  ", "caf\xe9 \u00fcber 12345 \u4e2d\u6587",
            "a]]\n]\n  )\n", "if x:\n        return 'a'\n\n\n"]
  sample = tricky + _stdlib_texts()[3::60]
  for text in sample:
    pieces = [p for p, _ in hf.pre_tokenizer.pre_tokenize_str(text)]
    assert [p.encode() for p in tokenizer_lib.pretokens(text)] == [
        bytes(tokenizer_lib._from_unicode(p)) for p in pieces]
    assert tok.encode(text) == hf.encode(text).ids


def test_forcing_adds_merges_that_build_missing_strings():
  learned = [(b"a", b"b"), (b"c", b"d"), (b"ab", b"cd"), (b"e", b"f")]
  merges, forced = tokenizer_lib._fit_merges(learned, [b"xyz", b"abcd"], 5)
  assert merges == learned[:3] + [(b"x", b"y"), (b"xy", b"z")] and forced == 2
  merges, forced = tokenizer_lib._fit_merges(learned, [b"abcde"], 4)
  assert merges == learned[:3] + [(b"abcd", b"e")] and forced == 1
  # In the vocabulary but not reachable by merges: tiktoken maps it anyway.
  odd = [(b"a", b"b"), (b"b", b"c"), (b"a", b"bc")]
  assert tokenizer_lib._fit_merges(odd, [b"abc"], 3) == (odd, 0)
  with pytest.raises(ValueError, match="need 7 merges"):
    tokenizer_lib._fit_merges(learned, [b"uvwxyz", b"abc"], 4)


def test_files_load_with_tiktokens_own_loader(tok, monkeypatch):
  # Data-gym conventions: the loader the authors use accepts our files too.
  from tiktoken.load import data_gym_to_mergeable_bpe_ranks  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # its cache is keyed by path
  ranks = data_gym_to_mergeable_bpe_ranks(
      os.path.join(tok.path, "vocab.bpe"), os.path.join(tok.path,
                                                        "encoder.json"))
  assert len(ranks) == 2047 and max(ranks.values()) == 2046


# ------------------------------------------------------------------- shards


def test_summary_and_manifest(tiny_data, tmp_path):
  config, info = tiny_data
  s = info.summary
  assert s["vocab_size"] == 2048 and s["eot_id"] == 2047
  assert s["train_tokens"] + s["eval_tokens"] == s["tokens"] + s["files"]
  assert 2.5 < s["bytes_per_token"] < 5 and s["required_not_single"] == []
  # Reuse the session tokenizer on a small corpus dir to test the rebuild.
  src = tmp_path / "code"
  shutil.copytree(os.path.join(os.path.dirname(json.__file__)), src,
                  ignore=shutil.ignore_patterns("__pycache__"))
  config = config_lib.base_config()
  config.data.sources = [str(src)]
  config.data.tokenizer_dir = info.tokenizer_dir
  config.data.eval_fraction = 0.5
  work = str(tmp_path / "work")
  first = data.run(config, work)
  assert first.summary["rebuilt"] and first.summary["files"] == 5
  written = json.loads((tmp_path / "work" / "data_summary.json").read_text())
  for key in ("files", "skipped", "bytes", "tokens", "bytes_per_token",
              "vocab_size", "eot_id", "tokenizer_dir"):
    assert key in written
  assert not data.prepare(config, work).summary["rebuilt"]
  (src / "extra.py").write_text("print('new file')\n")
  again = data.prepare(config, work)
  assert again.summary["rebuilt"] and again.summary["files"] == 6


def test_a_moved_workdir_finds_its_own_tokenizer(tiny_data, tmp_path,
                                                monkeypatch):
  """The own tokenizer is found relative to the data, from any working
  directory; so is the one of a manifest from before `tokenizer_own` (a
  path relative to the cwd of the time). A missing tokenizer is an error
  that names it."""
  config, info = tiny_data
  src = os.path.dirname(os.path.dirname(info.train_path))  # the workdir
  moved = tmp_path / "elsewhere" / "run"
  shutil.copytree(src, moved)
  monkeypatch.chdir(tmp_path)
  got = data.prepare(config, str(moved), reuse=True)
  assert got.tokenizer_dir == str(moved / "data" / "tokenizer")
  assert not got.summary["rebuilt"]
  manifest = moved / "data" / "manifest.json"
  old = json.loads(manifest.read_text())
  old.pop("tokenizer_own")
  old["tokenizer_dir"] = "runs/tiny/data/tokenizer"  # cwd-relative, stale
  manifest.write_text(json.dumps(old))
  assert data.prepare(config, str(moved), reuse=True).tokenizer_dir == str(
      moved / "data" / "tokenizer")
  old["tokenizer_own"], old["tokenizer_dir"] = False, str(tmp_path / "gone")
  manifest.write_text(json.dumps(old))
  with pytest.raises(data.DataError, match="gone.*missing"):
    data.prepare(config, str(moved), reuse=True)


def test_heldout_texts_are_heldout_documents(tiny_data):
  config, info = tiny_data
  texts = _heldout_texts(info, 3)
  corpus = corpus_lib.Corpus(config.data)
  heldout = [d.text for d in corpus if d.heldout]
  assert len(texts) == 3 and texts == heldout[:3]


# ----------------------------------------------------------------- pipeline


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_batches_shape_and_seed(tiny_data):
  config, info = tiny_data
  a = _take(data.train_iterator(config, info, 0, 1), 5)
  b = _take(data.train_iterator(config, info, 0, 1), 5)
  assert a[0].shape == (config.train.batch_size, config.model.block_size + 1)
  assert a[0].dtype == np.int32
  assert all((x == y).all() for x, y in zip(a, b))
  assert a[0].max() < 2048 and not (a[0] == a[1]).all()
  other = config.copy_and_resolve_references()
  other.data.seed = 1
  c = _take(data.train_iterator(other, info, 0, 1), 5)
  assert not any((x == y).all() for x, y in zip(a, c))
  default = data.train_iterator(config, info)  # jax's process index/count
  assert (next(default) == a[0]).all()
  other.data.seed, other.data.in_memory_max_bytes = 0, 0  # via tensorstore
  streamed = _take(data.train_iterator(other, info, 0, 1), 5)
  assert all((x == y).all() for x, y in zip(a, streamed))


def test_restore_state_reproduces_next_batches(tiny_data):
  config, info = tiny_data
  it = data.train_iterator(config, info, 0, 1)
  _take(it, 7)
  state = it.get_state()
  want = _take(it, 10)
  fresh = data.train_iterator(config, info, 0, 1)
  fresh.set_state(state)
  assert all((x == y).all() for x, y in zip(want, _take(fresh, 10)))


def test_restore_through_orbax_checkpoint_manager(tiny_data, tmp_path):
  config, info = tiny_data
  it = data.train_iterator(config, info, 0, 1)
  _take(it, 3)
  state = {"step": np.array(3)}
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(3, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=data.checkpoint_args(it)))
    mngr.wait_until_finished()
  want = _take(it, 10)
  fresh = data.train_iterator(config, info, 0, 1)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state),
        data=data.checkpoint_args(fresh, restore=True)))
  assert int(restored.state["step"]) == 3
  assert all((x == y).all() for x, y in zip(want, _take(fresh, 10)))


def _synthetic_info(tmp_path, n_tokens):
  """A train split whose token at position p is p: a window names its start."""
  path = str(tmp_path / "train.zarr")
  writer = data._Writer(path)
  writer.append(list(range(n_tokens)))
  writer.close()
  return data.DataInfo("", path, "", {})


def test_processes_see_disjoint_windows(tmp_path):
  config = config_lib.base_config("tiny")
  config.train.batch_size, config.model.block_size = 32, 128  # windows of 129
  info = _synthetic_info(tmp_path, 60_000)  # 464 windows: 232 per process
  epoch_batches = 232 // 16
  starts = []
  for p in (0, 1):
    batches = _take(data.train_iterator(config, info, p, 2), epoch_batches)
    assert batches[0].shape == (16, 129)
    rows = np.concatenate(batches)
    assert (np.diff(rows, axis=1) == 1).all()  # contiguous windows
    starts.append(set(rows[:, 0].tolist()))
    assert len(starts[-1]) == 16 * epoch_batches
  assert not starts[0] & starts[1]
  offsets = {s % 129 for s in starts[0] | starts[1]}
  assert len(offsets) == 1  # one epoch: one grid of non-overlapping windows


def test_epochs_reshuffle_and_never_end(tmp_path):
  config = config_lib.base_config("tiny")
  config.train.batch_size, config.model.block_size = 8, 128
  info = _synthetic_info(tmp_path, 3_000)  # 22 windows: 2.75 batches/epoch
  rows = np.concatenate(_take(data.train_iterator(config, info, 0, 1), 30))
  windows = (rows[:66, 0] // 129).reshape(3, 22)  # three epochs
  assert all(sorted(w) == list(range(22)) for w in windows.tolist())
  assert len({tuple(w) for w in windows.tolist()}) == 3


def test_eval_batches_are_deterministic_and_full(tiny_data):
  config, info = tiny_data
  a = data.eval_batches(config, info, 3)
  b = data.eval_batches(config, info, 3)
  assert len(a) == 3 and a[0].dtype == np.int32
  assert a[0].shape == (config.train.batch_size, config.model.block_size + 1)
  assert all((x == y).all() for x, y in zip(a, b))

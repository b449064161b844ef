"""The task suite: generation, tokenization, splits, bigram-proofing, loss,
user tasks and `--mode=eval` on a real checkpoint."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_circuits import checkpoints
from sparse_circuits import config_lib
from sparse_circuits import model as model_lib
from sparse_circuits import tasks
from sparse_circuits import tokenizer as tokenizer_lib

N_TRAIN, N_TEST, MAX_LEN = 48, 24, 128
PUBLISHED = ("single_double_quote", "bracket_counting", "set_or_string",
             "set_or_string_fixedvarname", "while_return_true")


@pytest.fixture(scope="module")
def tok(tiny_data):
  return tokenizer_lib.load(tiny_data[1].tokenizer_dir)


@pytest.fixture(scope="module")
def built(tok):
  return {n: tasks.build(n, tok, n_train=N_TRAIN, n_test=N_TEST, seed=0,
                         max_len=MAX_LEN) for n in tasks.TASK_NAMES}


def _splits(task):
  return (("train", task.train), ("test", task.test))


def test_suite_has_the_published_tasks_and_about_twenty():
  assert set(PUBLISHED) <= set(tasks.TASK_NAMES)
  assert len(tasks.TASK_NAMES) >= 20
  assert len(set(tasks.TASK_NAMES)) == len(tasks.TASK_NAMES)


def test_shapes_and_dtypes(built, tok):
  for name, task in built.items():
    assert task.name == name and task.description
    for split, d, n in (("train", task.train, N_TRAIN),
                        ("test", task.test, N_TEST)):
      assert d.tokens.dtype == np.int32 and d.tokens.ndim == 2, (name, split)
      assert d.tokens.shape[0] == n == len(d.texts) == len(d), (name, split)
      for a in (d.target, d.alternative, d.pair):
        assert a.dtype == np.int32 and a.shape == (n,), (name, split)
      np.testing.assert_array_equal(d.pair, np.arange(n) // 2)
      # Left-padded: each row is eot* then the prompt; no prompt token is eot.
      assert np.all((d.tokens == tok.eot_id).sum(1) <
                    d.tokens.shape[1]), (name, split)


def test_deterministic_per_seed_and_seed_dependent(tok, built):
  for name in tasks.TASK_NAMES:
    again = tasks.build(name, tok, n_train=N_TRAIN, n_test=N_TEST, seed=0,
                        max_len=MAX_LEN)
    other = tasks.build(name, tok, n_train=N_TRAIN, n_test=N_TEST, seed=1,
                        max_len=MAX_LEN)
    for (_, a), (_, b), (_, c) in zip(_splits(built[name]), _splits(again),
                                      _splits(other)):
      assert a.texts == b.texts, name
      np.testing.assert_array_equal(a.tokens, b.tokens)
      np.testing.assert_array_equal(a.target, b.target)
      assert a.texts != c.texts, f"{name}: seed 1 gives the same prompts"


def test_test_split_does_not_depend_on_n_train(tok, built):
  t = tasks.build("set_or_string", tok, n_train=8, n_test=N_TEST, seed=0,
                  max_len=MAX_LEN)
  assert t.test.texts == built["set_or_string"].test.texts


def test_train_and_test_do_not_overlap(built):
  for name, task in built.items():
    train, test = set(task.train.texts), set(task.test.texts)
    assert len(train) == N_TRAIN and len(test) == N_TEST, name  # no repeats
    assert not train & test, name


def test_candidates_are_required_single_tokens(built, tok):
  """Every candidate is in REQUIRED_TOKENS, so any tokenizer this project
  trains (the default one included) has it as one token."""
  required = set(tokenizer_lib.REQUIRED_TOKENS)
  for name, task in built.items():
    for _, d in _splits(task):
      for i in np.unique(np.concatenate([d.target, d.alternative])):
        s = tok.token_str(i)
        assert tok.encode(s) == [i], (name, s)
        assert s in required, f"{name}: candidate {s!r} not in REQUIRED_TOKENS"


def test_prompt_plus_target_tokenizes_as_prompt_then_target(built, tok):
  for name, task in built.items():
    for _, d in _splits(task):
      for i, text in enumerate(d.texts):
        ids = tok.encode(text)
        row = d.tokens[i]
        n = min(len(ids), len(row))
        np.testing.assert_array_equal(row[len(row) - n:], ids[-n:])
        assert np.all(row[:len(row) - n] == tok.eot_id)
        for cand in (d.target[i], d.alternative[i]):
          assert tok.encode(text + tok.token_str(cand)) == ids + [cand], (
              name, text, tok.token_str(cand))


def test_pairs_share_the_last_token_and_swap_candidates(built):
  for name, task in built.items():
    for split, d in _splits(task):
      assert np.all(d.tokens[0::2, -1] == d.tokens[1::2, -1]), (name, split)
      np.testing.assert_array_equal(d.target[0::2], d.alternative[1::2])
      np.testing.assert_array_equal(d.target[1::2], d.alternative[0::2])
      assert np.all(d.target != d.alternative), (name, split)
      assert all(a != b for a, b in zip(d.texts[0::2], d.texts[1::2]))


def test_left_truncation_keeps_the_end(tok):
  full = tasks.build("bracket_counting", tok, n_train=4, n_test=4, seed=0,
                     max_len=MAX_LEN)
  short = tasks.build("bracket_counting", tok, n_train=4, n_test=4, seed=0,
                      max_len=8)
  assert short.train.tokens.shape[1] == 8
  assert full.train.tokens.shape[1] > 8
  np.testing.assert_array_equal(short.train.tokens, full.train.tokens[:, -8:])


def test_bigram_only_model_scores_exactly_chance(built, tok):
  """All weights zero but the bigram table: the logits are bigram[last token]
  and both prompts of a pair share it, so exactly one of each pair is right."""
  cfg = model_lib.ModelConfig(n_layer=1, d_model=16, n_head=2, d_head=8,
                              d_mlp=32, block_size=MAX_LEN, vocab_size=2048,
                              afrac=0.0)
  params = jax.tree.map(jnp.zeros_like, model_lib.init_params(cfg, 0))
  params["bigram_table"] = jax.random.normal(jax.random.key(0), (2048, 2048))
  for name, task in built.items():
    for split, d in _splits(task):
      # More left padding changes nothing for this model; one shape, one jit.
      pad = np.full((len(d), MAX_LEN - d.tokens.shape[1]), tok.eot_id,
                    np.int32)
      d = dataclasses.replace(d, tokens=np.concatenate([pad, d.tokens], 1))
      r = tasks.evaluate_task(params, cfg, d, batch_size=N_TEST)
      assert r["accuracy"] == 0.5, (name, split, r)
      assert r["n"] == len(d) and math.isfinite(r["loss"])


def test_binary_loss_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(37, 50)).astype(np.float32) * 3
  target = rng.integers(0, 50, 37)
  alt = (target + rng.integers(1, 50, 37)) % 50
  d = logits[np.arange(37), target] - logits[np.arange(37), alt]
  ref_loss = np.mean(np.log1p(np.exp(-d.astype(np.float64))))
  ref_acc = np.mean(d > 0)
  loss, acc = jax.jit(tasks.binary_loss)(logits, target, alt)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(acc, ref_acc)
  np.testing.assert_allclose(tasks.per_example_loss(logits, target, alt),
                             np.log1p(np.exp(-d.astype(np.float64))),
                             rtol=1e-5, atol=1e-6)
  # Large margins stay finite (softplus, not log(sigmoid)).
  big = np.zeros((2, 4), np.float32)
  big[0, 1], big[1, 2] = 1e4, 1e4
  loss, acc = tasks.binary_loss(big, np.array([1, 1]), np.array([2, 2]))
  assert np.isfinite(loss) and float(acc) == 0.5
  np.testing.assert_allclose(loss, 5e3, rtol=1e-6)


def test_evaluate_task_agrees_with_forward_and_binary_loss(built):
  cfg = model_lib.ModelConfig(n_layer=1, d_model=16, n_head=2, d_head=8,
                              d_mlp=32, block_size=MAX_LEN, afrac=0.0)
  params = model_lib.init_params(cfg, 3)
  d = built["single_double_quote"].test
  logits, _ = model_lib.forward(params, d.tokens, cfg)
  loss, acc = tasks.binary_loss(logits[:, -1], d.target, d.alternative)
  r = tasks.evaluate_task(params, cfg, d, batch_size=7)  # wraps the last batch
  np.testing.assert_allclose(r["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(r["accuracy"], acc)


class _Without:
  """A tokenizer that splits one string (as a tokenizer lacking it would)."""

  def __init__(self, tok, missing):
    self._tok, self._missing = tok, missing

  def single_token(self, s):
    if s == self._missing:
      raise ValueError(f"{s!r} is not a single token: it encodes to [...]")
    return self._tok.single_token(s)

  def __getattr__(self, k):
    return getattr(self._tok, k)


def test_build_names_the_task_and_a_multi_token_candidate(tok):
  with pytest.raises(ValueError, match=r"task 'set_or_string'.*'\.add'"):
    tasks.build("set_or_string", _Without(tok, ".add"), n_train=4, n_test=4,
                seed=0, max_len=MAX_LEN)
  with pytest.raises(ValueError, match="unknown task"):
    tasks.build("no_such_task", tok, n_train=4, n_test=4, seed=0, max_len=8)
  with pytest.raises(ValueError, match="even"):
    tasks.build("set_or_string", tok, n_train=3, n_test=4, seed=0, max_len=8)


def _write_jsonl(path, rows):
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return str(path)


def _user_rows(n_pairs=10):
  rows = []
  for i in range(n_pairs):
    word = ("alpha beta gamma delta epsilon zeta eta theta iota kappa "
            "lambda mu".split())[i % 12] + " " + str(i)
    rows.append({"prompt": f"x = 'the {word} value", "target": "'",
                 "alternative": '"'})
    rows.append({"prompt": f'x = "the {word} value', "target": '"',
                 "alternative": "'"})
  return rows


def test_user_tasks_load_and_split(tmp_path, tok):
  rows = _user_rows() + [{"prompt": "for item", "target": " in",
                          "alternative": " =", "task": "user_for"}] * 2 + [
                              {"prompt": "for key", "target": " in",
                               "alternative": " =", "task": "user_for"}]
  path = _write_jsonl(tmp_path / "my_quotes.jsonl", rows)
  loaded = tasks.load_user_tasks(path, tok, seed=0, max_len=MAX_LEN)
  assert set(loaded) == {"my_quotes", "user_for"}
  t = loaded["my_quotes"]
  assert len(t.train) + len(t.test) == 20 and len(t.test) == 4  # 0.2 of pairs
  assert not set(t.train.texts) & set(t.test.texts)
  for d in (t.train, t.test):  # pairs stay together
    np.testing.assert_array_equal(d.pair, np.arange(len(d)) // 2)
    np.testing.assert_array_equal(d.target[0::2], d.alternative[1::2])
  f = loaded["user_for"]
  assert not set(f.train.texts) & set(f.test.texts)
  assert set(f.train.texts) | set(f.test.texts) == {"for item", "for key"}
  again = tasks.load_user_tasks(path, tok, seed=0, max_len=MAX_LEN)
  assert again["my_quotes"].test.texts == t.test.texts


def test_user_task_with_multi_token_candidate_is_rejected(tmp_path, tok):
  rows = _user_rows(2)
  rows[2] = dict(rows[2], target=" definitely_not_one_token")
  path = _write_jsonl(tmp_path / "bad.jsonl", rows)
  with pytest.raises(ValueError) as e:
    tasks.load_user_tasks(path, tok, max_len=MAX_LEN)
  msg = str(e.value)
  assert "bad.jsonl:3" in msg and "'bad'" in msg
  assert "definitely_not_one_token" in msg and "not a single token" in msg


def test_user_task_format_errors_name_the_line(tmp_path, tok):
  path = tmp_path / "broken.jsonl"
  path.write_text('{"prompt": "x", "target": "\'", "alternative": "\\""}\n'
                  "{not json\n")
  with pytest.raises(ValueError, match=r"broken.jsonl:2.*JSON"):
    tasks.load_user_tasks(str(path), tok, max_len=MAX_LEN)
  path.write_text('{"prompt": "x", "target": "\'"}\n')
  with pytest.raises(ValueError, match=r"broken.jsonl:1.*alternative"):
    tasks.load_user_tasks(str(path), tok, max_len=MAX_LEN)


def test_build_all_uses_config_and_user_tasks(tmp_path, tok):
  config = config_lib.base_config("tiny")
  config.tasks.n_train, config.tasks.n_test = 4, 2
  config.model.block_size = 64
  config.tasks.user_tasks = _write_jsonl(tmp_path / "extra.jsonl",
                                         _user_rows(4))
  all_tasks = tasks.build_all(config, tok)
  assert list(all_tasks) == list(tasks.TASK_NAMES) + ["extra"]
  assert all(t.train.tokens.shape[1] <= 64 for t in all_tasks.values())
  assert len(all_tasks["while_return_true"].test) == 2
  some = tasks.build_all(config, tok, names=["extra", "bracket_counting"])
  assert list(some) == ["extra", "bracket_counting"]
  config.tasks.names = ("for_in_or_assign",)
  assert list(tasks.build_all(config, tok)) == ["for_in_or_assign"]
  with pytest.raises(ValueError, match="unknown tasks"):
    tasks.build_all(config, tok, names=["nope"])


def _tiny_run_config(tokenizer_dir):
  c = config_lib.base_config("tiny")
  m = c.model
  m.n_layer, m.d_model, m.n_head, m.d_mlp, m.block_size = 1, 32, 2, 128, 32
  # pfrac 1 would leave fewer than 4 weights per neuron at this width.
  c.sparsity.pfrac = 4.0
  t = c.train
  t.num_steps, t.batch_size, t.checkpoint_every = 3, 4, 3
  t.eval_every, t.eval_batches, t.log_every = 3, 1, 1
  c.data.max_corpus_bytes = 300_000
  c.data.eval_fraction = 0.2
  c.data.tokenizer_dir = tokenizer_dir
  c.tasks.n_train, c.tasks.n_test = 4, 6
  # Each prompt length is one CPU compile (seconds): evaluate a few tasks.
  c.tasks.names = ("single_double_quote", "bracket_counting",
                   "for_in_or_assign")
  return c


def test_evaluate_run_on_a_trained_checkpoint(tmp_path, tiny_data, caplog):
  from sparse_circuits import evaluate  # pylint: disable=g-import-not-at-top
  from sparse_circuits import train  # pylint: disable=g-import-not-at-top
  config = _tiny_run_config(tiny_data[1].tokenizer_dir)
  workdir = str(tmp_path / "run")
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint"):
    evaluate.run(config, workdir)
  train.run(config, workdir)
  config.tasks.n_test = 4  # eval takes tasks.* from the command line config
  with caplog.at_level("INFO", logger="sparse_circuits"):
    summary = evaluate.run(config, workdir)
  with open(tmp_path / "run" / "eval_summary.json") as f:
    written = json.load(f)
  assert written == summary
  assert set(written) == {"lm_loss", "step", "tasks"}
  assert written["step"] == 3 and math.isfinite(written["lm_loss"])
  assert list(written["tasks"]) == list(config.tasks.names)
  for name, r in written["tasks"].items():
    assert set(r) == {"loss", "accuracy", "n"}, name
    assert math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1, name
    assert r["n"] == 4, name
  out = caplog.text
  assert "single_double_quote" in out and "LM loss" in out

"""The task suite: generation, tokenization, right-padding, bigram-proofing,
tokenizer robustness, user tasks, the task table of docs/tasks.md and
`--mode=eval`."""

import dataclasses
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_circuits import checkpoints
from sparse_circuits.circuits import document as circuit_lib
from sparse_circuits import config_lib
from sparse_circuits import model as model_lib
from sparse_circuits import sites as sites_lib
from sparse_circuits.tasks import scoring
from sparse_circuits.tasks import suite as task_suite
from sparse_circuits.tasks import binary as tasks
from sparse_circuits import tokenizer as tokenizer_lib

N_TRAIN, N_TEST, MAX_LEN = 48, 24, 128
# The paper's Table 1, in its order.
PAPER = ("single_double_quote", "final_kwarg", "set_or_string",
         "set_or_string_fixedvarname", "class_init", "with_as",
         "bracket_brace", "with_open", "bracket_counting", "for_while",
         "else_elif", "fstring_brace", "if_ternary", "var_swap", "indent_for",
         "lambda_func", "if_equals", "enumerate_range", "var_if",
         "while_return_true")
TASKS_DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "tasks.md"


@pytest.fixture(scope="module")
def tok(tiny_data):
  return tokenizer_lib.load(tiny_data[1].tokenizer_dir)


@pytest.fixture(scope="module")
def built(tok):
  return {n: tasks.build(n, tok, n_train=N_TRAIN, n_test=N_TEST, seed=0,
                         max_len=MAX_LEN) for n in task_suite.TASK_NAMES}


def _splits(task):
  return (("train", task.train), ("test", task.test))


def _random_cfg_params(**kw):
  cfg = model_lib.ModelConfig(**{**dict(
      n_layer=1, d_model=16, n_head=2, d_head=8, d_mlp=32,
      block_size=MAX_LEN, afrac=0.25, sink=True), **kw})
  params = model_lib.init_params(cfg, 3)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [  # off init: position embeddings matter
      x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  return cfg, params


def test_suites_hold_the_papers_twenty_tasks_then_the_extras():
  assert task_suite.PAPER_TASKS == PAPER
  assert task_suite.suite("paper") == PAPER
  assert task_suite.suite("all")[:20] == PAPER
  assert len(set(task_suite.TASK_NAMES)) == len(task_suite.TASK_NAMES) > 20
  assert all(not task_suite.GENERATORS[n].paper
             for n in task_suite.EXTRA_TASKS)
  with pytest.raises(ValueError, match="unknown task suite"):
    task_suite.suite("everything")
  assert config_lib.base_config("tiny").tasks.suite == "paper"
  bad = config_lib.base_config("tiny")
  bad.tasks.suite = "most"
  with pytest.raises(ValueError, match="tasks.suite"):
    config_lib.validate(bad)


def test_right_padded_rows_hold_the_prompt_at_positions_0_to_last(built, tok):
  for name, task in built.items():
    assert task.name == name and task.description
    for split, d, n in (("train", task.train, N_TRAIN),
                        ("test", task.test, N_TEST)):
      assert d.tokens.dtype == np.int32 and len(d.texts) == len(d) == n
      for a in (d.target, d.alternative, d.pair, d.last):
        assert a.dtype == np.int32 and a.shape == (n,), (name, split)
      np.testing.assert_array_equal(d.pair, np.arange(n) // 2)
      assert d.last.max() == d.tokens.shape[1] - 1, (name, split)
      for i, text in enumerate(d.texts):
        ids = tok.encode(text)[-MAX_LEN:]
        np.testing.assert_array_equal(d.prompt(i), ids, err_msg=name)
        assert np.all(d.tokens[i, d.last[i] + 1:] == tok.eot_id)


def test_deterministic_per_seed_and_seed_dependent(tok, built):
  for name in task_suite.TASK_NAMES:
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
  t = tasks.build("set_or_string", tok, n_train=0, n_test=N_TEST, seed=0,
                  max_len=MAX_LEN)
  assert t.test.texts == built["set_or_string"].test.texts
  assert len(t.train) == 0


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


def test_prompt_plus_candidate_tokenizes_as_prompt_then_candidate(built, tok):
  for name, task in built.items():
    for _, d in _splits(task):
      for i, text in enumerate(d.texts):
        ids = tok.encode(text)
        for cand in (d.target[i], d.alternative[i]):
          assert tok.encode(text + tok.token_str(cand)) == ids + [cand], (
              name, text, tok.token_str(cand))


def test_pairs_share_the_last_token_and_swap_candidates(built):
  for name, task in built.items():
    bigram_proof = task_suite.GENERATORS[name].bigram_proof
    for split, d in _splits(task):
      last = d.tokens[np.arange(len(d)), d.last]
      # else_elif is flagged: its decisive token (else / elif) is the last.
      assert np.all(last[0::2] == last[1::2]) == bigram_proof, (name, split)
      np.testing.assert_array_equal(d.target[0::2], d.alternative[1::2])
      np.testing.assert_array_equal(d.target[1::2], d.alternative[0::2])
      assert np.all(d.target != d.alternative), (name, split)
      assert all(a != b for a, b in zip(d.texts[0::2], d.texts[1::2]))


def test_truncation_keeps_the_last_max_len_tokens(tok, built):
  full = built["bracket_counting"].train
  short = tasks.build("bracket_counting", tok, n_train=N_TRAIN, n_test=N_TEST,
                      seed=0, max_len=8).train
  assert short.tokens.shape[1] == 8 and full.tokens.shape[1] > 8
  for i in range(len(full)):
    np.testing.assert_array_equal(short.prompt(i), full.prompt(i)[-8:])


def test_bigram_only_model_scores_exactly_chance(built, tok):
  """All weights zero but the bigram table: the logits are bigram[last token]
  and both prompts of a pair share it, so exactly one of each pair is right."""
  cfg = model_lib.ModelConfig(n_layer=1, d_model=16, n_head=2, d_head=8,
                              d_mlp=32, block_size=MAX_LEN, vocab_size=2048,
                              afrac=0.0)
  params = jax.tree.map(jnp.zeros_like, model_lib.init_params(cfg, 0))
  params["bigram_table"] = jax.random.normal(jax.random.key(0), (2048, 2048))
  for name, task in built.items():
    if not task_suite.GENERATORS[name].bigram_proof:
      continue
    for split, d in _splits(task):
      r = tasks.evaluate_task(params, cfg, d, batch_size=N_TEST)
      assert r["accuracy"] == 0.5, (name, split, r)
      assert r["n"] == len(d) and math.isfinite(r["loss"])
      # Both prompts of a pair see the same logits: d_a + d_b is exactly 0,
      # so no pair moves towards its own answer.
      assert r["pair_accuracy"] == 0.0, (name, split, r)


def test_pair_accuracy_counts_the_contrast_not_the_prior():
  """Pairs (0, 1) and (2, 3) swap candidates; row 4 is a pair of its own
  and does not count. A prior for candidate 7 that wins on both prompts of
  pair 0 leaves accuracy at 1/2 there but the contrast right."""
  d = tasks.TaskData(tokens=np.zeros((5, 3), np.int32),
                     target=np.asarray([7, 9, 7, 9, 7], np.int32),
                     alternative=np.asarray([9, 7, 9, 7, 9], np.int32),
                     pair=np.asarray([0, 0, 1, 1, 2], np.int32),
                     texts=[""] * 5)
  np.testing.assert_array_equal(tasks.swapped_pairs(d), [[0, 1], [2, 3]])
  # pair 0: +3 and -1 (the prior for 7 wins on row 1), sum > 0: right;
  # pair 1: -2 and +1, sum < 0: wrong.
  assert tasks.pair_accuracy(d, [3.0, -1.0, -2.0, 1.0, 5.0]) == 0.5
  assert tasks.pair_accuracy(d, [1.0, -1.0, 1.0, -1.0, 5.0]) == 0.0
  lone = tasks.TaskData(tokens=np.zeros((1, 3), np.int32),
                        target=np.asarray([7]), alternative=np.asarray([9]),
                        pair=np.asarray([0]), texts=[""])
  assert math.isnan(tasks.pair_accuracy(lone, [1.0]))


@pytest.mark.slow
def test_padded_last_position_logits_equal_each_prompts_own_forward(built):
  """Right-padding is invisible: at each prompt's last position the logits
  of the padded batch (model.forward read_at, the task loss and prune's
  logit_diff) equal those of the prompt run alone, unpadded."""
  cfg, params = _random_cfg_params()
  full = built["while_return_true"].test
  # The shortest and the longest prompt (each length is one compile).
  rows = np.argsort(full.last, kind="stable")[[0, -1]]
  d = dataclasses.replace(
      full, tokens=full.tokens[rows], target=full.target[rows],
      alternative=full.alternative[rows], pair=full.pair[rows],
      texts=[full.texts[i] for i in rows], last=full.last[rows])
  assert d.last[1] > d.last[0] + 8
  fwd = jax.jit(lambda t: model_lib.forward(params, t, cfg)[0][0, -1])
  want = np.stack([np.asarray(fwd(d.prompt(i)[None])) for i in range(len(d))])
  got = jax.jit(lambda t, at: model_lib.forward(params, t, cfg,
                                                read_at=at)[0])(d.tokens,
                                                                d.last)
  np.testing.assert_allclose(got[:, 0], want, rtol=1e-5, atol=1e-5)

  r_ = np.arange(len(d))
  diff = want[r_, d.target] - want[r_, d.alternative]
  r = tasks.evaluate_task(params, cfg, d)
  np.testing.assert_allclose(r["loss"], np.mean(np.logaddexp(0, -diff)),
                             rtol=1e-5)
  assert r["accuracy"] == np.mean(diff > 0)
  sites = sites_lib.node_sites(cfg)
  ones = {s.name: jnp.ones((s.width,)) for s in sites}
  means = {s.name: jnp.zeros((s.width,)) for s in sites}
  pruned = jax.jit(lambda t, at: scoring.logit_diff(
      params, cfg, t, d.target, d.alternative, ones, means, at))
  np.testing.assert_allclose(pruned(d.tokens, d.last), diff, rtol=1e-5,
                             atol=1e-5)


def test_circuit_examples_show_the_prompt_without_padding(built, tok):
  task = built["bracket_counting"]
  for k, ex in enumerate(circuit_lib.examples(task, tok)):
    assert "".join(ex["prompt_tokens"]) == task.test.texts[2 * k]
    assert ex["target"] == tok.token_str(task.test.target[2 * k])


class _Splitting:
  """The tokenizer, except that some strings encode as given pieces (as in
  a tokenizer that lacks them as single tokens)."""

  def __init__(self, tok, splits):
    self._tok, self._splits = tok, splits

  def encode(self, s):
    if s in self._splits:
      return [self._tok.single_token(p) for p in self._splits[s]]
    return self._tok.encode(s)

  def __getattr__(self, k):
    return getattr(self._tok, k)


def test_a_candidate_that_is_not_one_token_is_compared_by_its_first(tok):
  split = _Splitting(tok, {".add": [".", "add"]})
  t = tasks.build("set_or_string", split, n_train=4, n_test=4, seed=0,
                  max_len=MAX_LEN)
  ids = {tok.single_token("."), tok.single_token(" +=")}
  for d in (t.train, t.test):
    assert set(d.target.tolist()) == ids == set(d.alternative.tolist())


def test_a_task_whose_candidates_share_their_first_token_is_skipped(tok):
  split = _Splitting(tok, {"]]\n": ["]", "]\n"], "]\n": ["]", "\n"]})
  with pytest.raises(tasks.CandidateError,
                     match=r"task 'bracket_counting'.*'\]\]\\n'.*'\]\\n'"):
    tasks.build("bracket_counting", split, n_train=4, n_test=4, seed=0,
                max_len=MAX_LEN)
  config = config_lib.base_config("tiny")
  config.tasks.n_train, config.tasks.n_test = 4, 4
  config.tasks.names = ("bracket_counting", "set_or_string")
  built_, skipped = tasks.build_suite(config, split)
  assert list(built_) == ["set_or_string"]
  assert list(skipped) == ["bracket_counting"] and "]]" in skipped[
      "bracket_counting"]
  with pytest.raises(tasks.CandidateError, match="bracket_counting"):
    tasks.build_all(config, split)


def test_build_checks_its_arguments(tok):
  with pytest.raises(ValueError, match="unknown task"):
    tasks.build("no_such_task", tok, n_train=4, n_test=4, seed=0, max_len=8)
  with pytest.raises(ValueError, match="even"):
    tasks.build("set_or_string", tok, n_train=3, n_test=4, seed=0, max_len=8)


def test_task_table_in_the_docs_is_the_generated_one():
  """Regenerate with `python -m sparse_circuits.tasks.suite --markdown`."""
  text = TASKS_DOC.read_text()
  start = text.index("<!-- task table -->") + len("<!-- task table -->")
  end = text.index("<!-- end task table -->")
  assert text[start:end].strip() == task_suite.markdown_table(), (
      "docs/tasks.md's task table is stale: paste the output of `python -m "
      "sparse_circuits.tasks.suite --markdown` between its markers")
  assert task_suite.markdown_table().count("\n| `") == len(
      task_suite.TASK_NAMES)


def _write_jsonl(path, rows):
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return str(path)


def _load_user(path, tok, names):
  """The named tasks of a user task file, loaded as a run loads them
  (config.tasks.user_tasks)."""
  config = config_lib.base_config("tiny")
  config.model.block_size = MAX_LEN
  config.tasks.seed = 0
  config.tasks.user_tasks = str(path)
  return tasks.build_all(config, tok, names=names)


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


def test_user_tasks_load_split_and_right_pad(tmp_path, tok):
  rows = _user_rows() + [{"prompt": "for item", "target": " in",
                          "alternative": " =", "task": "user_for"}] * 2 + [
                              {"prompt": "for key", "target": " in",
                               "alternative": " =", "task": "user_for"}]
  path = _write_jsonl(tmp_path / "my_quotes.jsonl", rows)
  loaded = _load_user(path, tok, ["my_quotes", "user_for"])
  assert set(loaded) == {"my_quotes", "user_for"}
  t = loaded["my_quotes"]
  assert len(t.train) + len(t.test) == 20 and len(t.test) == 4  # 0.2 of pairs
  assert not set(t.train.texts) & set(t.test.texts)
  for d in (t.train, t.test):  # pairs stay together, prompts at 0..last
    np.testing.assert_array_equal(d.pair, np.arange(len(d)) // 2)
    np.testing.assert_array_equal(d.target[0::2], d.alternative[1::2])
    for i, text in enumerate(d.texts):
      np.testing.assert_array_equal(d.prompt(i), tok.encode(text))
  f = loaded["user_for"]
  assert not set(f.train.texts) & set(f.test.texts)
  assert set(f.train.texts) | set(f.test.texts) == {"for item", "for key"}
  again = _load_user(path, tok, ["my_quotes", "user_for"])
  assert again["my_quotes"].test.texts == t.test.texts


def test_user_task_candidates_that_one_token_cannot_tell_apart(tmp_path, tok):
  rows = _user_rows(2)
  rows[2] = dict(rows[2], target=" definitely_not_one_token")
  ok = _load_user(_write_jsonl(tmp_path / "ok.jsonl", rows), tok,
                  ["ok"])["ok"]
  first = tok.encode(" definitely_not_one_token")[0]
  assert first in np.concatenate([ok.train.target, ok.test.target])
  rows[2] = dict(rows[2], alternative=" definitely_not_two_tokens")
  path = _write_jsonl(tmp_path / "bad.jsonl", rows)
  with pytest.raises(tasks.CandidateError) as e:
    _load_user(path, tok, ["bad"])
  msg = str(e.value)
  assert "bad.jsonl:3" in msg and "'bad'" in msg
  assert "definitely_not_one_token" in msg and "definitely_not_two" in msg


def test_user_task_format_errors_name_the_line(tmp_path, tok):
  path = tmp_path / "broken.jsonl"
  path.write_text('{"prompt": "x", "target": "\'", "alternative": "\\""}\n'
                  "{not json\n")
  with pytest.raises(ValueError, match=r"broken.jsonl:2.*JSON"):
    _load_user(path, tok, ["broken"])
  path.write_text('{"prompt": "x", "target": "\'"}\n')
  with pytest.raises(ValueError, match=r"broken.jsonl:1.*alternative"):
    _load_user(path, tok, ["broken"])


def test_build_suite_follows_suite_names_and_user_tasks(tmp_path, tok):
  config = config_lib.base_config("tiny")
  config.tasks.n_train, config.tasks.n_test = 4, 2
  config.model.block_size = 64
  config.tasks.user_tasks = _write_jsonl(tmp_path / "extra.jsonl",
                                         _user_rows(4))
  all_tasks = tasks.build_all(config, tok)
  assert list(all_tasks) == list(PAPER) + ["extra"]
  assert all(t.train.tokens.shape[1] <= 64 for t in all_tasks.values())
  assert len(all_tasks["while_return_true"].test) == 2
  config.tasks.suite = "all"
  assert list(tasks.build_all(config, tok)) == list(
      task_suite.TASK_NAMES) + ["extra"]
  some = tasks.build_all(config, tok, names=["extra", "bracket_counting"])
  assert list(some) == ["extra", "bracket_counting"]
  config.tasks.names = ("for_while",)
  assert list(tasks.build_all(config, tok)) == ["for_while"]
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
  return c


@pytest.mark.slow
def test_evaluate_run_reports_skipped_tasks_and_runs_the_rest(
    tmp_path, tiny_data, caplog):
  from sparse_circuits import evaluate  # pylint: disable=g-import-not-at-top
  from sparse_circuits import train  # pylint: disable=g-import-not-at-top
  config = _tiny_run_config(tiny_data[1].tokenizer_dir)
  workdir = str(tmp_path / "run")
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint"):
    evaluate.run(config, workdir)
  train.run(config, workdir)
  config.tasks.n_test = 4  # eval takes tasks.* from the command line config
  rows = [{"prompt": f"x = {i} +", "target": " definitely_not_one_token",
           "alternative": " definitely_not_two_tokens"} for i in range(4)]
  config.tasks.user_tasks = _write_jsonl(tmp_path / "multi.jsonl", rows)
  # Extras listed before paper tasks: the summary still puts paper first.
  config.tasks.names = ("list_or_int", "multi", "single_double_quote",
                        "else_elif")
  with caplog.at_level("INFO", logger="sparse_circuits"):
    summary = evaluate.run(config, workdir)
  with open(tmp_path / "run" / "eval_summary.json") as f:
    written = json.load(f)
  assert written == summary
  assert set(written) == {"lm_loss", "step", "tasks", "skipped",
                          "environment"}
  assert written["environment"]["packages"]["jax"] == jax.__version__
  assert written["step"] == 3 and math.isfinite(written["lm_loss"])
  assert list(written["tasks"]) == ["single_double_quote", "else_elif",
                                    "list_or_int"]
  for name, r in written["tasks"].items():
    assert set(r) == {"loss", "accuracy", "pair_accuracy", "n"}, name
    assert math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1, name
    assert r["n"] == 4, name
  assert list(written["skipped"]) == ["multi"]
  assert "definitely_not_one_token" in written["skipped"]["multi"]
  out = caplog.text
  assert "LM loss" in out and "paper tasks at >= 80% accuracy" in out
  assert out.index("single_double_quote") < out.index("list_or_int")
  assert "else_elif*" in out and "skipped multi" in out

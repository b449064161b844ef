"""Binary next-token tasks as token arrays; their loss and accuracy
(docs/method.md §4; paper §2.2, Table 1).

`suite.py` generates the pairs of prompts; this module turns them (or a
user's JSONL rows) into `TaskData` for one tokenizer and evaluates a model on
them. Task loss is the binary cross-entropy over the two candidates at the
prompt's last position; accuracy is how often the target's logit wins.

Prompts are right-padded: row i holds its prompt's tokens at positions
0..last[i], exactly as in an unpadded forward (attention is causal, so the
padding after a prompt never reaches it), and the logits are read at last[i].
Left padding would shift a short prompt to late positions behind a run of
end-of-text tokens that never occurs in training. A prompt longer than the
model's context keeps its last `max_len` tokens.

A candidate that is not one token of the tokenizer (a model imported with the
authors' tokenizer may lack ours) is compared by its first token, what the
model sees first, as long as the two candidates of every prompt still differ
there; otherwise the task cannot be built with that tokenizer
(`CandidateError`), and `build_suite` reports it as skipped.

Shapes: N examples, T prompt length, V vocab.
"""

import dataclasses
import functools
import json
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sparse_circuits import model as model_lib
from sparse_circuits import reporting
from sparse_circuits.tasks import scoring
from sparse_circuits.tasks import suite as task_suite
from sparse_circuits.errors import ConfigError, TaskFileError, UserError

_log = reporting.get(__name__)


@dataclasses.dataclass
class TaskData:
  """One split. Rows 2i and 2i+1 of a built-in task form pair i."""
  tokens: np.ndarray       # int32 [N, T]: the prompt at 0..last, then eot
  target: np.ndarray       # int32 [N]
  alternative: np.ndarray  # int32 [N]
  pair: np.ndarray         # int32 [N]
  texts: list[str]         # the prompts before truncation
  last: np.ndarray | None = None  # int32 [N]; None: every row is full

  def __post_init__(self):
    if self.last is None:
      self.last = np.full(len(self.target), self.tokens.shape[1] - 1,
                          np.int32)

  def __len__(self):
    return len(self.target)

  def prompt(self, i: int) -> np.ndarray:
    """Row i's prompt tokens, without the padding."""
    return self.tokens[i, :self.last[i] + 1]


@dataclasses.dataclass
class Task:
  name: str
  description: str
  train: TaskData
  test: TaskData


class CandidateError(UserError, ValueError):
  """The tokenizer cannot tell a task's two candidates apart by one token."""


# ------------------------------------------------------------------ building


def _candidate_ids(tok, task: str, targets: list[str],
                   alternatives: list[str], where=None) -> dict[str, int]:
  """The token compared for each candidate: itself if it is one token, else
  its first token (the model's next token in such text) when every
  target/alternative pair still differs there. `where(i)` names row i."""
  ids, split = {}, []
  for s in {*targets, *alternatives}:
    enc = tok.encode(s)
    if not enc:
      raise CandidateError(f"task {task!r}: an empty candidate")
    ids[s] = enc[0]
    if len(enc) > 1:
      split.append(f"{s!r} -> {[tok.token_str(i) for i in enc]}")
  for i, (t, a) in enumerate(zip(targets, alternatives)):
    if ids[t] == ids[a]:
      raise CandidateError(
          f"task {task!r}{where(i) if where else ''}: candidates {t!r} and "
          f"{a!r} are not single tokens of the tokenizer at {tok.path} and "
          f"both start with the token {tok.token_str(ids[t])!r}, so one "
          f"token cannot tell them apart")
  if split:
    _log.info("task %r: candidates compared by their first token: %s",
                 task, "; ".join(sorted(split)))
  return ids


def _task_data(tok, task: str, prompts: list[str], targets: list[str],
               alternatives: list[str], pair: np.ndarray, max_len: int,
               where=None) -> TaskData:
  if max_len < 1:
    raise ValueError(f"max_len must be positive, got {max_len}")
  ids = _candidate_ids(tok, task, targets, alternatives, where)
  encoded = [p[-max_len:] for p in tok.encode_batch(prompts)] if prompts else []
  if any(not p for p in encoded):
    raise ValueError(f"task {task!r}: an empty prompt")
  t_len = max((len(p) for p in encoded), default=1)
  tokens = np.full((len(encoded), t_len), tok.eot_id, np.int32)
  for i, p in enumerate(encoded):
    tokens[i, :len(p)] = p
  return TaskData(tokens=tokens,
                  target=np.array([ids[s] for s in targets], np.int32),
                  alternative=np.array([ids[s] for s in alternatives],
                                       np.int32),
                  pair=np.asarray(pair, np.int32).reshape(-1),
                  texts=list(prompts),
                  last=np.array([len(p) - 1 for p in encoded], np.int32))


def last_positions(tokens_NxT: np.ndarray, pad_id: int | None) -> np.ndarray:
  """int32 [N]: each row's last position that is not `pad_id` (right
  padding); with pad_id None every row is full. A row of nothing but
  padding raises ValueError naming it."""
  tokens_NxT = np.asarray(tokens_NxT)
  n, t = tokens_NxT.shape
  if pad_id is None:
    return np.full(n, t - 1, np.int32)
  real = tokens_NxT != pad_id
  empty = np.nonzero(~real.any(1))[0]
  if len(empty):
    raise ValueError(f"rows {empty.tolist()[:5]} hold only padding "
                     f"(token {pad_id})")
  return (t - 1 - np.argmax(real[:, ::-1], axis=1)).astype(np.int32)


def from_token_rows(tok, task: str, tokens_NxT: np.ndarray, last: np.ndarray,
                    targets: list[str], alternatives: list[str],
                    pair: np.ndarray, texts: list[str] | None = None,
                    where=None) -> TaskData:
  """TaskData from prompts that are token rows already (e.g. the authors'
  task samples): row i is read at last[i]; what follows is set to the
  end-of-text id (never read: attention is causal). Candidates are strings,
  compared as in every task (their first token; CandidateError if that
  cannot tell a row's two apart)."""
  tokens = np.array(tokens_NxT, np.int32)
  last = np.asarray(last, np.int32)
  if tokens.ndim != 2 or last.shape != (len(tokens),):
    raise ValueError(f"task {task!r}: want tokens [N, T] and last [N], got "
                     f"{tokens.shape} and {last.shape}")
  if np.any(last < 0) or np.any(last >= tokens.shape[1]):
    raise ValueError(f"task {task!r}: last positions outside 0..T-1")
  tokens[np.arange(tokens.shape[1])[None, :] > last[:, None]] = tok.eot_id
  ids = _candidate_ids(tok, task, targets, alternatives, where)
  return TaskData(tokens=tokens,
                  target=np.array([ids[s] for s in targets], np.int32),
                  alternative=np.array([ids[s] for s in alternatives],
                                       np.int32),
                  pair=np.asarray(pair, np.int32).reshape(-1),
                  texts=list(texts) if texts is not None else
                  [tok.decode(r[:l + 1]) for r, l in zip(tokens, last)],
                  last=last)


def _pairs_data(tok, gen: task_suite.Generator, pairs, max_len) -> TaskData:
  prompts, targets, alternatives = [], [], []
  for a, b in pairs:
    prompts += [a[0], b[0]]
    targets += [a[1], b[1]]
    alternatives += [b[1], a[1]]
  data = _task_data(tok, gen.name, prompts, targets, alternatives,
                    np.arange(len(prompts)) // 2, max_len)
  last = data.tokens[np.arange(len(data)), data.last]
  if gen.bigram_proof and np.any(last[0::2] != last[1::2]):
    raise AssertionError(f"task {gen.name!r}: a pair's last tokens differ")
  return data


def build(name: str, tok, *, n_train: int, n_test: int, seed: int,
          max_len: int) -> Task:
  """A built-in task; deterministic in (name, seed, n_test, n_train).

  The test pairs come from their own random stream (so they do not depend
  on n_train); train pairs are drawn from another and skip every test text.
  Raises CandidateError if the tokenizer cannot compare its candidates.
  """
  if name not in task_suite.GENERATORS:
    raise ConfigError(f"unknown task {name!r}; built-in tasks: "
                      f"{task_suite.TASK_NAMES}")
  for n, field in ((n_train, "n_train"), (n_test, "n_test")):
    if n < 0 or n % 2:
      raise ConfigError(f"config.tasks.{field} must be even and >= 0 "
                        f"(prompts come in pairs), got {n}")
  gen = task_suite.GENERATORS[name]
  test = task_suite.generate(name, n_test // 2, seed, "test")
  held = frozenset(s[0] for p in test for s in p)
  train = task_suite.generate(name, n_train // 2, seed, "train", held)
  return Task(name, gen.description, _pairs_data(tok, gen, train, max_len),
              _pairs_data(tok, gen, test, max_len))


def build_suite(config, tok, names=None, n_train: int | None = None
                ) -> tuple[dict[str, Task], dict[str, str]]:
  """(tasks, skipped): the tasks named (default: config.tasks.names, or if
  that is empty the suite config.tasks.suite, then the user tasks), and for
  each task this tokenizer cannot express, the reason. `n_train` overrides
  config.tasks.n_train for built-in tasks (eval needs no train split)."""
  t = config.tasks
  max_len = config.model.block_size
  user: dict[str, Callable[[], Task]] = {}
  for path in [p.strip() for p in str(t.user_tasks or "").split(",")]:
    if path:
      loaded = _user_builders(path, tok, seed=t.seed, max_len=max_len)
      clash = sorted((set(loaded) & set(user)) |
                     (set(loaded) & set(task_suite.TASK_NAMES)))
      if clash:
        raise TaskFileError(f"{path}: task names {clash} are already taken "
                            "by a built-in task or another user task file")
      user.update(loaded)
  if names is None:
    names = tuple(t.names) or (
        list(task_suite.suite(t.suite)) + list(user))
  names = list(names)
  unknown = [n for n in names if n not in task_suite.GENERATORS and
             n not in user]
  if unknown:
    raise ConfigError(f"unknown tasks {unknown}; known: "
                      f"{list(task_suite.TASK_NAMES) + list(user)}")
  n_train = t.n_train if n_train is None else n_train
  built, skipped = {}, {}
  for n in names:
    try:
      built[n] = user[n]() if n in user else build(
          n, tok, n_train=n_train, n_test=t.n_test, seed=t.seed,
          max_len=max_len)
    except CandidateError as e:
      skipped[n] = str(e)
      _log.warning("skipping task %r: %s", n, e)
  return built, skipped


def build_all(config, tok, names=None) -> dict[str, Task]:
  """`build_suite`'s tasks; raises CandidateError if any had to be skipped
  (for callers such as pruning that need every task they name)."""
  built, skipped = build_suite(config, tok, names)
  if skipped:
    raise CandidateError("; ".join(skipped.values()))
  return built


# --------------------------------------------------------------- user tasks


def _read_user_rows(path: str) -> dict[str, list[tuple[int, dict]]]:
  from etils import epath  # pylint: disable=g-import-not-at-top
  p = epath.Path(path)
  default = p.name.split(".")[0]
  tasks: dict[str, list[tuple[int, dict]]] = {}
  seen = set()
  try:
    text = p.read_text()
  except (OSError, UnicodeDecodeError) as e:
    raise TaskFileError(f"config.tasks.user_tasks: cannot read {path} ({e})"
                        ) from None
  for lineno, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    where = f"{path}:{lineno}"
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise TaskFileError(f"{where}: not a JSON object ({e})") from None
    if not isinstance(row, dict):
      raise TaskFileError(f"{where}: not a JSON object")
    bad = [k for k in ("prompt", "target", "alternative")
           if not isinstance(row.get(k), str) or not row[k]]
    if bad:
      raise TaskFileError(f"{where}: needs non-empty strings {bad} (a row is "
                          '{"prompt", "target", "alternative"[, "task"]})')
    name = str(row.get("task") or default)
    if row["target"] == row["alternative"]:
      raise TaskFileError(f"{where}: task {name!r}: target and alternative "
                          f"are both {row['target']!r}")
    key = (name, row["prompt"], row["target"], row["alternative"])
    if key not in seen:  # an exact repeat adds nothing
      seen.add(key)
      tasks.setdefault(name, []).append((lineno, row))
  if not tasks:
    raise TaskFileError(f"{path}: no rows")
  return tasks


def _warn_unnatural_split(tok, path, name, rows) -> None:
  """Warns when prompt + target does not tokenize as the prompt's tokens and
  then the target's first token: the model may never see that split."""
  for lineno, row in rows:
    ids = tok.encode(row["prompt"])
    first = tok.encode(row["target"])[:1]
    if tok.encode(row["prompt"] + row["target"])[:len(ids) + 1] != ids + first:
      _log.warning("%s:%d: task %r: prompt + %r does not tokenize as the "
                      "prompt's tokens then the target; the model may never "
                      "see this token split in real text", path, lineno, name,
                      row["target"])


def _user_builders(path: str, tok, *, n_test_frac: float = 0.2,
                   seed: int = 0, max_len: int) -> dict[str, Callable[[], Task]]:
  """Builders of the tasks in a .jsonl of {"prompt", "target", "alternative"
  [, "task"]} (config.tasks.user_tasks).

  Rows of one task (named by "task", default the file's stem) are split into
  train and test by seeded shuffle, n_test_frac of them for test. Two
  consecutive rows with swapped candidates are kept together as a pair
  (same `pair` id); any other row is a pair of its own. The rows are read
  and split now (format errors raise here); each task is tokenized when its
  builder is called. Candidates that are not single tokens are compared by
  their first token; if that cannot tell a row's two apart, CandidateError
  names the line and the candidates.
  """
  out = {}
  for name, rows in _read_user_rows(path).items():
    groups, i = [], 0
    while i < len(rows):
      r = rows[i]
      nxt = rows[i + 1] if i + 1 < len(rows) else None
      if nxt is not None and (nxt[1]["target"], nxt[1]["alternative"]) == (
          r[1]["alternative"], r[1]["target"]):
        groups.append([r, nxt])
        i += 2
      else:
        groups.append([r])
        i += 1
    if len(groups) < 2:
      raise TaskFileError(f"{path}: task {name!r} has {len(rows)} rows; it "
                          "needs at least two (pairs) to have train and test "
                          "examples")
    order = task_suite.rng(seed, name, "user").permutation(len(groups))
    n_test = min(max(1, round(n_test_frac * len(groups))), len(groups) - 1)
    test = [groups[k] for k in order[:n_test]]
    train = [groups[k] for k in order[n_test:]]
    train_texts = {r["prompt"] for g in train for _, r in g}
    overlap = [g for g in test if any(r["prompt"] in train_texts
                                      for _, r in g)]
    test = [g for g in test if g not in overlap]
    train += overlap  # the same prompt never sits in both splits

    def data(groups, name=name):
      flat = [(k, ln, r) for k, g in enumerate(groups) for ln, r in g]
      return _task_data(
          tok, name, [r["prompt"] for _, _, r in flat],
          [r["target"] for _, _, r in flat],
          [r["alternative"] for _, _, r in flat],
          np.array([k for k, _, _ in flat]), max_len,
          where=lambda i: f" ({path}:{flat[i][1]})")

    def make(name=name, rows=rows, train=train, test=test):
      task = Task(name, f"user task from {path}", data(train), data(test))
      _warn_unnatural_split(tok, path, name, rows)
      return task
    out[name] = make
  return out


# ----------------------------------------------------------- loss, metrics


@functools.partial(jax.jit, static_argnames=("cfg",))
def _stats(params, tokens_BxT, last_B, target_B, alternative_B, sign_B,
           interventions, scale_shift, cfg):
  logits_Bx1xV, _ = model_lib.forward(params, tokens_BxT, cfg, interventions,
                                      read_at=last_B)
  d_B = scoring.candidate_diff(logits_Bx1xV[:, 0], target_B,
                               alternative_B).astype(jnp.float32)
  d_B = scoring.calibrate(d_B, scale_shift[0], scale_shift[1], sign_B)
  return scoring.task_loss(d_B), d_B


def _pad_columns(tokens_NxT, multiple: int, cap: int, fill: int):
  """Right-pads to a multiple of `multiple` (at most `cap`) columns, so that
  tasks of different prompt lengths share one compiled program."""
  t = tokens_NxT.shape[1]
  width = max(t, min(cap, -(-t // multiple) * multiple))
  if width == t:
    return tokens_NxT
  pad = np.full((tokens_NxT.shape[0], width - t), fill, tokens_NxT.dtype)
  return np.concatenate([tokens_NxT, pad], 1)


def evaluate_task(params, cfg: model_lib.ModelConfig, data: TaskData,
                  batch_size: int = 256, interventions=None,
                  calibration=None) -> dict:
  """Task loss and accuracy at each prompt's last position: {loss, accuracy,
  pair_accuracy, n}. calibration: a circuit's {"scale", "shift"}
  (circuit.json), applied to the logit difference as pruning scored it.

  pair_accuracy: the fraction of pairs (two prompts with swapped candidates)
  whose logit difference favours each prompt's own target more than the
  other prompt does (d_a + d_b > 0): the contrast, whatever prior one
  candidate has; NaN without pairs."""
  n = len(data.target)
  if n == 0:
    return dict(loss=math.nan, accuracy=math.nan, pair_accuracy=math.nan,
                n=0)
  # The fill value is never read: it sits after every prompt.
  tokens = _pad_columns(data.tokens, 64, cfg.block_size, fill=0)
  bs = min(batch_size, n)
  scale_shift = jnp.asarray(
      [1.0, 0.0] if calibration is None else
      [calibration["scale"], calibration["shift"]], jnp.float32)
  sign = scoring.calibration_sign(data.target, data.alternative).astype(
      np.float32)
  losses, diffs = [], []
  for start in range(0, n, bs):
    idx = np.arange(start, start + bs) % n  # the last batch wraps around
    loss_B, d_B = _stats(params, tokens[idx], data.last[idx],
                         data.target[idx], data.alternative[idx], sign[idx],
                         interventions, scale_shift, cfg)
    k = min(bs, n - start)
    losses.append(np.asarray(loss_B)[:k])
    diffs.append(np.asarray(d_B)[:k])
  d = np.concatenate(diffs)
  return dict(loss=float(np.mean(np.concatenate(losses))),
              accuracy=float(np.mean(d > 0)),
              pair_accuracy=pair_accuracy(data, d), n=n)


def swapped_pairs(data: TaskData) -> np.ndarray:
  """[P, 2] row indices of the pairs whose two prompts swap candidates
  (none for data without pair ids)."""
  pair = getattr(data, "pair", None)
  rows = {}
  for i, p in enumerate(() if pair is None else pair):
    rows.setdefault(int(p), []).append(i)
  out = [(a, b) for a, b in (r for r in rows.values() if len(r) == 2)
         if data.target[a] == data.alternative[b]
         and data.alternative[a] == data.target[b]]
  return np.asarray(out, np.int64).reshape(-1, 2)


def pair_accuracy(data: TaskData, d_N) -> float:
  pairs = swapped_pairs(data)
  if not len(pairs):
    return math.nan
  d = np.asarray(d_N)
  return float(np.mean(d[pairs[:, 0]] + d[pairs[:, 1]] > 0))

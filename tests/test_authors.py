"""The authors' released artifacts in this project's tools (authors.py,
circuits/overlap.py, docs/authors_models.md).

No real viz_data.pt is available offline: the files here are built to the
schema in docs/authors_models.md ("What a viz_data.pt holds"), and the model
is a small one in the authors' checkpoint format with a tokenizer in their
file format (2048 ids, end-of-text 2047).
"""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_interop import _beeg, _config, _random_state_dict, _write_authors_dir, _write_tokenizer  # pylint: disable=g-import-not-at-top,wrong-import-position

from sparse_circuits import authors  # pylint: disable=wrong-import-position
from sparse_circuits import interop  # pylint: disable=wrong-import-position
from sparse_circuits import runs  # pylint: disable=wrong-import-position
from sparse_circuits import sites as sites_lib  # pylint: disable=wrong-import-position
from sparse_circuits import viz  # pylint: disable=wrong-import-position
from sparse_circuits.circuits import document as document_lib  # pylint: disable=wrong-import-position
from sparse_circuits.circuits import overlap as overlap_lib  # pylint: disable=wrong-import-position
from sparse_circuits.errors import CircuitError, InteropError  # pylint: disable=wrong-import-position
from sparse_circuits.tasks import binary as tasks_lib  # pylint: disable=wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "authors_models.md"
BEEG = dict(vocab_size=2048, block_size=64, n_layer=2, n_head=2, d_head=16,
            d_model=32, d_mlp=128)
# What each test file holds: (site, kept ids), with two position channels
# (ids >= d_model = 32) in an act_in site when d_pos_emb is set.
KEPT = {"0.attn.act_in": [3, 7], "0.attn.q": [1, 17], "0.attn.k": [1, 17],
        "0.attn.v": [5], "0.attn.resid_delta": [7], "1.mlp.act_in": [7, 9],
        "1.mlp.post_act": [100], "1.mlp.resid_delta": [9],
        "final_resid": [9]}
QUOTES = ['x = "ab', 'print("hi', 'name = "cd', 'f("a b',
          "x = 'ab", "print('hi", "name = 'cd", "f('a b"]


def _viz_data(kept=None, beeg=None, tokens=None, **over):
  """A viz_data dict to the documented schema (torch tensors)."""
  kept = KEPT if kept is None else kept
  beeg = dict(_beeg(**BEEG), **(beeg or {}))
  sites = sites_lib.site_names(beeg["n_layer"])
  circuit = {s: torch.tensor(kept.get(s, []), dtype=torch.long)
             for s in sites if sites_lib.kind(s) or s == "final_resid"}
  rng = np.random.default_rng(0)
  ch = {s: [float(x) for x in 0.02 + rng.random(len(v))]
        for s, v in circuit.items() if len(v)}
  if tokens is None:
    tokens = torch.zeros((4, 6), dtype=torch.long)
  acts = {"0.attn.q": {1: torch.zeros(tokens.shape)}}
  imp = {"beeg_model_config": beeg, "loss": 0.0029, "interv_loss": 0.0137,
         "ch_interv_losses": ch, "layer_interv_losses": {"0.attn": 0.5,
                                                         "1.mlp": 0.25},
         "pair_data": [
             [torch.tensor([[0.5, 0.0], [-0.25, 0.125]]),
              torch.tensor([3, 7]), [1, 17], ("0.attn.act_in", "0.attn.q")],
             [torch.tensor([[0.75], [-0.5]]), [7, "bias"],
              torch.tensor([100]), ("1.mlp.act_in", "1.mlp.post_act")]],
         "task_samples": (tokens, acts),
         "task_samples_circuit": (tokens, acts)}
  d = {"circuit_data": circuit,
       "prune_config": {"heaviside_temp": 0.1, "init_noise_bias": 0.1,
                        "init_noise_scale": 0.01, "inv_beta2": 0.05,
                        "logk_coef": 1e-4, "lr": 3e-3, "seed": 0, "wd": 1e-3},
       "all_loss": [(0, 0.5), (1, 0.25)], "num_total_nodes": 1234,
       "samples": {}, "importances": imp}
  d.update(over)
  return d


def _save(d, path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  torch.save(d, path)
  return str(path)


def _viz_path(root, model="csp_test", task="single_double_quote",
              sweep="prune_v4", k="k_optim"):
  return pathlib.Path(root) / "viz" / model / task / sweep / k / "viz_data.pt"


# ------------------------------------------------------------ reading


def test_viz_data_imports_nodes_edges_and_halved_losses(tmp_path):
  d = _viz_data(beeg={"d_pos_emb": 4},
                kept=dict(KEPT, **{"1.mlp.act_in": [7, 9, 33]}))
  path = _save(d, _viz_path(tmp_path))
  doc = authors.circuit_document(authors.load_viz_data(path), path=path)
  got = {}
  for n in doc["nodes"]:
    got.setdefault(n["site"], []).append(n["index"])
  assert got == {s: v for s, v in dict(
      KEPT, **{"1.mlp.act_in": [7, 9, 33]}).items() if v}
  pos = [n for n in doc["nodes"] if n["position_channel"] is not None]
  assert [(n["id"], n["position_channel"]) for n in pos] == [
      ("1.mlp.act_in:33", 1)]
  final = [n for n in doc["nodes"] if n["site"] == "final_resid"]
  assert final[0]["kind"] == "final_resid" and final[0]["layer"] == 2
  # Losses: stored pair sums, halved and labelled.
  assert doc["losses"]["full_model"] == pytest.approx(0.0029 / 2)
  assert doc["losses"]["circuit"] == pytest.approx(0.0137 / 2)
  assert doc["imported"]["stored_losses"] == {"loss": pytest.approx(0.0029),
                                              "interv_loss": pytest.approx(
                                                  0.0137)}
  assert "halved" in doc["imported"]["loss_convention"]
  ch = d["importances"]["ch_interv_losses"]
  for n in doc["nodes"]:
    k = d["circuit_data"][n["site"]].tolist().index(n["index"])
    assert n["ablated_loss"] == pytest.approx(ch[n["site"]][k] / 2)
    assert n["ablation_delta"] == pytest.approx(ch[n["site"]][k] / 2
                                                - 0.0137 / 2)
  # Edges: their ablation deltas, kept as deltas, never as weights.
  assert doc["edges"] == []
  assert doc["imported"]["edges"] == [
      {"source": "0.attn.act_in:3", "target": "0.attn.q:1", "delta": 0.5,
       "kind": "ablation_delta"},
      {"source": "0.attn.act_in:7", "target": "0.attn.q:1", "delta": -0.25,
       "kind": "ablation_delta"},
      {"source": "0.attn.act_in:7", "target": "0.attn.q:17",
       "delta": 0.125, "kind": "ablation_delta"},
      {"source": "1.mlp.act_in:7", "target": "1.mlp.post_act:100",
       "delta": 0.75, "kind": "ablation_delta"},
      {"source": "1.mlp.act_in:bias", "target": "1.mlp.post_act:100",
       "delta": -0.5, "kind": "ablation_delta"}]
  assert all("weight" not in e for e in doc["imported"]["edges"])
  assert doc["prune_config"] == d["prune_config"]
  assert doc["imported"]["all_loss"] == [[0, 0.5], [1, 0.25]]
  assert doc["imported"]["layer_interv_losses"] == {"0.attn": 0.5,
                                                    "1.mlp": 0.25}
  assert doc["counts"]["total_nodes"] == 1234
  assert (doc["imported"]["model"], doc["imported"]["task"],
          doc["imported"]["sweep"], doc["imported"]["k"]) == (
              "csp_test", "single_double_quote", "prune_v4", "k_optim")
  assert doc["task"]["name"] == "single_double_quote"
  # The viewer renders it, with what only an imported circuit has.
  page = viz.write_circuit_page(doc, tmp_path / "page.html")
  html = pathlib.Path(page).read_text()
  assert "Imported circuit" in html and "ablation deltas, not weights" in html
  assert "logk_coef" in html and "0.00685" in html  # halved circuit loss


def _mutate(d, where, value):
  node = d
  for k in where[:-1]:
    node = node[k]
  if value is KeyError:
    del node[where[-1]]
  else:
    node[where[-1]] = value


MALFORMED = {
    "no circuit_data": (("circuit_data",), KeyError, "circuit_data"),
    "circuit_data not a dict": (("circuit_data",), [1, 2], "circuit_data"),
    "unknown site": (("circuit_data", "0.attn.foo"), torch.tensor([1]),
                     "0.attn.foo"),
    "float ids": (("circuit_data", "0.attn.q"), torch.tensor([1.5]),
                  "circuit_data['0.attn.q']"),
    "id out of range": (("circuit_data", "0.attn.v"), torch.tensor([99]),
                        "circuit_data['0.attn.v']"),
    "losses not 1:1": (("importances", "ch_interv_losses", "0.attn.q"),
                       [0.1], "ch_interv_losses['0.attn.q']"),
    "no interv_loss": (("importances", "interv_loss"), KeyError,
                       "importances.interv_loss"),
    "loss a string": (("importances", "loss"), "low", "importances.loss"),
    "pair_data W shape": (("importances", "pair_data", 0, 0),
                          torch.zeros(3, 3), "importances.pair_data[0][0]"),
    "pair_data sites": (("importances", "pair_data", 1, 3), "1.mlp",
                        "importances.pair_data[1][3]"),
    "all_loss": (("all_loss",), [1, 2], "all_loss"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_gives_one_line_error_naming_the_key(tmp_path, case):
  where, value, key = MALFORMED[case]
  d = _viz_data()
  d["importances"]["pair_data"] = [list(p) for p in
                                   d["importances"]["pair_data"]]
  _mutate(d, where, value)
  path = _save(d, tmp_path / "viz_data.pt")
  with pytest.raises(InteropError) as e:
    authors.circuit_document(authors.load_viz_data(path), path=path)
  msg = str(e.value)
  assert "\n" not in msg and key in msg and path in msg, msg


def test_malformed_task_samples_and_pickled_code_are_refused(tmp_path, tok):
  d = _viz_data(tokens=torch.zeros((3, 5), dtype=torch.long))
  path = _save(d, tmp_path / "odd.pt")
  with pytest.raises(InteropError, match=r"importances\.task_samples\[0\]"):
    authors.task_from_samples(authors.load_viz_data(path), tok, path=path,
                              name="single_double_quote")
  d = _viz_data()
  d["importances"]["task_samples"] = torch.zeros(4, 5, dtype=torch.long)
  path = _save(d, tmp_path / "flat.pt")
  with pytest.raises(InteropError, match=r"importances\.task_samples: want"):
    authors.task_from_samples(authors.load_viz_data(path), tok, path=path,
                              name="single_double_quote")
  path = str(tmp_path / "code.pt")
  torch.save({"circuit_data": pathlib.PurePosixPath("/x")}, path)
  with pytest.raises(InteropError, match="weights_only=True"):
    authors.load_viz_data(path)
  path = _save([1, 2], tmp_path / "list.pt")
  with pytest.raises(InteropError, match="not the dict"):
    authors.load_viz_data(path)


# ------------------------------------------------------------ task rows


def test_last_positions_and_token_rows(tok):
  rows = np.array([[5, 6, 0, 0], [5, 6, 7, 0], [0, 5, 6, 0], [5, 6, 7, 8]])
  np.testing.assert_array_equal(tasks_lib.last_positions(rows, 0),
                                [1, 2, 2, 3])
  np.testing.assert_array_equal(tasks_lib.last_positions(rows, None),
                                [3, 3, 3, 3])
  with pytest.raises(ValueError, match=r"rows \[1\] hold only padding"):
    tasks_lib.last_positions(np.array([[1, 0], [0, 0]]), 0)
  enc = [tok.encode(p) for p in QUOTES[:2]]
  t = max(map(len, enc))
  tokens = np.zeros((2, t + 2), np.int64)
  for i, e in enumerate(enc):
    tokens[i, :len(e)] = e
  data = tasks_lib.from_token_rows(
      tok, "q", tokens, tasks_lib.last_positions(tokens, 0), ['"', "'"],
      ["'", '"'], np.array([0, 0]))
  assert data.prompt(0).tolist() == enc[0]
  assert data.texts == QUOTES[:2]
  assert (data.tokens[0, len(enc[0]):] == tok.eot_id).all()


# ------------------------------------------------------------ with a model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A small model in the authors' format with a tokenizer in theirs."""
  root = tmp_path_factory.mktemp("authors")
  b = _beeg(**BEEG)
  src = _write_authors_dir(str(root / "csp_test"), b, _random_state_dict(b, 0))
  _write_tokenizer(src, 2048 - 1 - 256)
  return root, src


@pytest.fixture(scope="module")
def tok(model_dir):
  from sparse_circuits import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  return tokenizer_lib.load(model_dir[1])


@pytest.fixture(scope="module")
def imported(model_dir):
  root, src = model_dir
  config = _config()
  config.data.tokenizer_dir = ""
  config.interop.path = src
  work = str(root / "work")
  interop.import_run(config, work)
  return work, runs.load(work)


def _sample_tokens(tok, n_pad=3):
  """Quote prompts as the authors store them: N rows, row i paired with
  row i + N/2, right-padded with token 0; one prompt ends in a real '!'
  (token 0) and is full width, so no padding follows it."""
  enc = [tok.encode(p) for p in QUOTES]
  t = max(map(len, enc)) + n_pad
  tokens = np.zeros((len(enc), t), np.int64)
  for i, e in enumerate(enc):
    tokens[i, :len(e)] = e
  return tokens, enc


def test_task_samples_evaluate_as_a_task(imported, tok, tmp_path):
  _, run = imported
  tokens, enc = _sample_tokens(tok)
  path = _save(_viz_data(tokens=torch.from_numpy(tokens)),
               _viz_path(tmp_path))
  viz_data = authors.load_viz_data(path)
  task = authors.task_from_samples(viz_data, tok, path=path,
                                   name="single_double_quote")
  data = task.test
  half = len(QUOTES) // 2
  order = [j for i in range(half) for j in (i, i + half)]
  assert [data.prompt(r).tolist() for r in range(len(order))] == [
      enc[j] for j in order]
  dq, sq = tok.encode('"')[0], tok.encode("'")[0]
  assert data.target.tolist() == [dq, sq] * half
  assert data.alternative.tolist() == [sq, dq] * half
  assert "last token that is not 0" in task.description
  ev = run.evaluate(task)
  assert ev["n"] == len(QUOTES) and np.isfinite(ev["loss"])
  # The same prompts built from their text give the same loss.
  same = tasks_lib.from_token_rows(
      tok, "q", np.array([tokens[j] for j in order]),
      np.array([len(enc[j]) - 1 for j in order]), ['"', "'"] * half,
      ["'", '"'] * half, np.arange(len(order)) // 2)
  assert run.evaluate(tasks_lib.Task("q", "", same, same))["loss"] == (
      pytest.approx(ev["loss"], abs=1e-6))
  # Given candidates replace the rule: rows 0..N/2-1 get them, then swapped.
  given = authors.task_from_samples(viz_data, tok, path=path, name="other",
                                    candidates=("'", '"'))
  assert given.test.target.tolist() == [sq, dq] * half
  with pytest.raises(InteropError, match="give candidates"):
    authors.task_from_samples(viz_data, tok, path=path, name="other")
  # A prompt that really ends in '!' (token 0) is read there when its
  # length is given; the default rule reads it one token early.
  bang = tokens.copy()
  bang[0, len(enc[0])] = 0
  lengths = [len(e) for e in enc]
  lengths[0] += 1
  t = authors.task_from_samples(
      {"importances": {"task_samples": (bang, {})}}, tok, path=path,
      name="single_double_quote", lengths=lengths)
  assert t.test.last[0] == len(enc[0])


def _our_circuit(run, kept):
  """A circuit document as --mode=prune writes it, reduced to what overlap
  and the viewer read."""
  nodes = [{"id": sites_lib.node_id(s, i), "site": s, "index": i,
            "tau": 1.0, "mean": 0.0}
           for s, ids in kept.items() for i in ids]
  return {"schema_version": 2, "task": {"name": "single_double_quote"},
          "model": {"workdir": run.workdir, "step": run.step,
                    "config": run.config.model.to_dict()},
          "nodes": nodes, "edges": [], "counts": {"nodes": len(nodes),
                                                  "edges": 0},
          "losses": {}}


def test_node_masks_leave_out_what_is_not_ours_and_refuse_foreign_nodes():
  widths = {"0.attn.q": 4, "0.attn.act_in": 8}
  nodes = [{"site": "0.attn.q", "index": 3},
           {"site": "0.attn.act_in", "index": 9, "position_channel": 1},
           {"site": "final_resid", "index": 2}]
  got = sites_lib.node_masks(nodes, widths)
  assert got["0.attn.q"].tolist() == [False, False, False, True]
  assert not got["0.attn.act_in"].any()
  for bad in ({"site": "0.attn.q", "index": 4},
              {"site": "7.mlp.post_act", "index": 0}):
    with pytest.raises(ValueError, match="is not a node of this model"):
      sites_lib.node_masks(nodes + [bad], widths)


def test_overlap_by_site_and_refusal_across_models(imported):
  _, run = imported
  theirs = authors.circuit_document(_viz_data(), path="viz_data.pt")
  ours = _our_circuit(run, {"0.attn.q": [1, 2], "0.attn.v": [5],
                            "1.mlp.post_act": [3]})
  ov = overlap_lib.overlap(theirs, ours)
  theirs_n = sum(len(v) for s, v in KEPT.items() if s != "final_resid")
  assert (ov["shared"], ov["a"]["nodes"], ov["b"]["nodes"]) == (2, theirs_n, 4)
  assert ov["union"] == theirs_n + 4 - 2
  assert ov["jaccard"] == pytest.approx(2 / ov["union"])
  assert ov["by_site"]["0.attn.q"] == {"shared": [1], "only_a": [17],
                                       "only_b": [2], "jaccard": 1 / 3}
  assert ov["not_compared"] == {"a": ["final_resid:9"], "b": []}
  assert ov["a"]["source"] == "authors" and ov["b"]["source"] == (
      "sparse_circuits")
  other = dict(ours, model={"config": dict(ours["model"]["config"],
                                           d_model=64)})
  with pytest.raises(CircuitError, match="d_model 32 vs 64"):
    overlap_lib.overlap(theirs, other)


def test_import_circuit_adds_weight_edges_overlap_and_page(imported, tok,
                                                           tmp_path):
  work, run = imported
  tokens, _ = _sample_tokens(tok)
  path = _save(_viz_data(tokens=torch.from_numpy(tokens)),
               _viz_path(tmp_path))
  ours = _our_circuit(run, {"0.attn.q": [1, 2], "0.attn.v": [5]})
  ours_path = tmp_path / "ours.json"
  ours_path.write_text(json.dumps(ours))
  config = run.config.copy_and_resolve_references()
  config.interop.viz_data = path
  config.interop.compare = str(ours_path)
  out = authors.import_circuit_run(config, work)
  assert out == os.path.join(work, "circuits", "authors_single_double_quote",
                             "circuit.json")
  doc = json.loads(pathlib.Path(out).read_text())
  # Weight edges as for our circuits: the model's nonzero weights between
  # the kept nodes, from the task's input tokens and to its candidates.
  task = authors.task_from_samples(authors.load_viz_data(path), tok,
                                   path=path, name="single_double_quote")
  want = document_lib.edges(run.params, run.cfg,
                            authors.kept_masks(doc, run.cfg),
                            document_lib.io_tokens(task, tok.eot_id))
  assert doc["edges"] == json.loads(json.dumps(want))
  assert doc["counts"]["edges"] == document_lib.edge_counts(want)["edges"]
  assert doc["counts"]["pairs"] == document_lib.connectable_pairs(
      run.params, run.cfg, authors.kept_masks(doc, run.cfg),
      document_lib.io_tokens(task, tok.eot_id))["pairs"]
  assert {e["kind"] for e in doc["edges"]} >= {"weight", "unembedding"}
  assert doc["task_samples_eval"]["full_model"]["n"] == len(QUOTES)
  assert doc["overlap"]["shared"] == 2 and doc["overlap"]["b"]["path"] == (
      str(ours_path))
  html = (pathlib.Path(out).parent / "index.html").read_text()
  n_theirs = sum(len(v) for s, v in KEPT.items() if s != "final_resid")
  assert "Overlap with another circuit" in html
  assert f"Jaccard {2 / (n_theirs + 3 - 2):.3f}" in html
  rows = [json.loads(l) for l in (pathlib.Path(out).parent /
                                  "task_samples.jsonl").read_text().splitlines()]
  assert [r["prompt"] for r in rows[:2]] == [QUOTES[0], QUOTES[4]]
  assert {r["task"] for r in rows} == {"single_double_quote"}


# ------------------------------------------------------------ the documented path


def _doc_commands() -> list[str]:
  m = re.search(r"<!-- e2e -->\s*```sh\n(.*?)```\s*<!-- /e2e -->",
                DOC.read_text(), re.S)
  assert m, "docs/authors_models.md lost its e2e block"
  lines = m.group(1).replace("\\\n", " ").splitlines()
  return [l.strip() for l in lines if l.strip().startswith("python")]


# Flags that make the documented commands cheap on a test model; each
# command gets them after its own (the later flag wins).
SMALL = ("--config.data.max_corpus_bytes=1000000",
         "--config.data.eval_fraction=0.05", "--config.tasks.n_train=16",
         "--config.tasks.n_test=8", "--config.train.eval_batches=1",
         "--config.prune.steps=10", "--config.prune.batch_size=8",
         "--config.prune.mean_batches=1", "--config.prune.sweep_size=2",
         "--config.prune.stability_seeds=1",
         "--config.prune.nonsense_control=False",
         "--config.prune.random_control=False",
         "--config.prune.target_loss=1.0",
         "--config.tasks.names=('single_double_quote',)")


@pytest.mark.slow
def test_documented_commands_run_end_to_end(model_dir, tok, tmp_path):
  _, src = model_dir
  work = tmp_path / "runs" / "csp"
  tokens, _ = _sample_tokens(tok)
  viz_path = _save(_viz_data(tokens=torch.from_numpy(tokens)),
                   _viz_path(tmp_path, model="csp_test"))
  env = dict(os.environ, MODEL=src, WORK=str(work), VIZ=viz_path,
             PYTHONPATH=str(REPO))
  commands = _doc_commands()
  assert any("--mode=import_circuit" in c for c in commands), commands
  for c in commands:
    c = shlex.quote(sys.executable) + c[len("python"):]
    r = subprocess.run(f"{c} {' '.join(shlex.quote(f) for f in SMALL)}", shell=True,
                       cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, (c, r.stderr[-3000:])
  ours = json.loads((work / "circuits" / "single_double_quote" /
                     "circuit.json").read_text())
  theirs = json.loads((work / "circuits" / "authors_single_double_quote" /
                       "circuit.json").read_text())
  assert theirs["overlap"] == json.loads(json.dumps(
      overlap_lib.overlap(theirs, ours), allow_nan=False)) | {
          "b": theirs["overlap"]["b"]}
  assert theirs["counts"]["edges"] is not None
  ts = theirs["task_samples_eval"]
  assert ts["full_model"]["n"] == ts["circuit"]["n"] == len(QUOTES)
  # Their circuit applies through the API as ours do.
  circ = runs.load(str(work)).circuit("authors_single_double_quote")
  kept = sum(n["site"] != "final_resid" for n in theirs["nodes"])
  assert sum(int(m.sum()) for m in circ.keep.values()) == kept
  assert np.isfinite(circ.evaluate()["loss"])
  assert (work / "eval_summary.json").is_file()
  page = (work / "circuits" / "authors_single_double_quote" /
          "index.html").read_text()
  assert "Overlap with another circuit" in page
  assert (work / "index.html").is_file()
  assert (work / "circuits" / "single_double_quote" / "graph.json").is_file()
  # A malformed file: exit 2 and one line that names the key.
  bad = _viz_data()
  del bad["importances"]["pair_data"]
  bad_path = _save(bad, tmp_path / "bad" / "viz_data.pt")
  r = subprocess.run(
      [sys.executable, "-m", "sparse_circuits.main",
       "--config=configs/tiny.py", "--mode=import_circuit",
       f"--workdir={work}", f"--config.interop.viz_data={bad_path}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "importances.pair_data" in last, (
      r.stderr[-3000:])
  assert "Traceback" not in r.stderr

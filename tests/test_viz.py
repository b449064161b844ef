"""Circuit viewer: exports, --mode=report on a workdir, and the page itself in
Debian's headless Chromium (driven by Selenium with the system chromedriver).

The browser tests skip when chromium/chromedriver are missing unless
SPARSE_CIRCUITS_REQUIRE_BROWSER is set (CI sets it; `.ci/browser_setup.sh`
installs both).
"""

import collections
import csv
import io
import json
import os
import pathlib
import re
import shutil

import numpy as np
import pytest

from sparse_circuits import authors
from sparse_circuits import errors
from sparse_circuits import viz
from sparse_circuits.circuits import overlap as overlap_lib

try:
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  from selenium.webdriver.common.action_chains import ActionChains
except ImportError:  # the browser tests skip (or fail, in CI) below
  webdriver = None

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def circuit():
  return json.loads((FIXTURES / "circuit_small.json").read_text())


@pytest.fixture
def metrics():
  return viz.read_metrics(FIXTURES / "metrics_small.jsonl")


def _pairs(edges):
  return collections.Counter((e["source"], e["target"]) for e in edges)


def test_edges_csv_has_one_row_per_edge(circuit):
  rows = list(csv.reader(io.StringIO(viz.edges_csv(circuit))))
  assert rows[0] == ["source", "target", "weight", "kind"]
  assert [(s, t, float(w), k) for s, t, w, k in rows[1:]] == [
      (e["source"], e["target"], e["weight"], e["kind"])
      for e in circuit["edges"]]


def test_dot_names_every_node_and_edge(circuit):
  dot = viz.graph_dot(circuit)
  assert dot.startswith("digraph ") and dot.count("{") == dot.count("}")
  for n in circuit["nodes"] + circuit["io_nodes"]:
    assert f'"{n["id"]}" [' in dot
  for e in circuit["edges"]:
    edge = f'"{e["source"]}" -> "{e["target"]}"'
    line = next(l for l in dot.splitlines() if l.strip().startswith(edge))
    assert f'label="{e["weight"]:.6g}"' in line


def test_graph_json_is_nodes_and_edges_only(circuit):
  g = viz.graph_dict(circuit)
  assert set(g) == {"nodes", "edges"}
  assert [n["id"] for n in g["nodes"]] == [
      n["id"] for n in circuit["nodes"] + circuit["io_nodes"]]
  keys = ("source", "target", "weight", "kind")
  assert g["edges"] == [{k: e[k] for k in keys} for e in circuit["edges"]]
  assert all("top_snippets" not in n for n in g["nodes"])


def test_page_is_self_contained_and_json_safe(tmp_path, circuit, metrics):
  circuit["losses"]["random_init_control"] = float("nan")
  circuit["task"]["name"] = "quote</script><b>"
  path = viz.write_circuit_page(circuit, tmp_path, metrics)
  assert path == str(tmp_path / "index.html")
  page = pathlib.Path(path).read_text()
  assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)
  blob = page.split('id="page-data">')[1].split("</script>")[0]
  data = json.loads(blob)  # strict JSON: no NaN, which JSON.parse rejects
  assert data["circuit"]["losses"]["random_init_control"] is None
  assert data["circuit"]["task"]["name"] == "quote</script><b>"


def test_page_tolerates_missing_optional_fields(tmp_path):
  minimal = {"task": {"name": "t"},
             "nodes": [{"site": "0.attn.q", "index": 20},
                       {"site": "0.mlp.post_act", "index": 3}],
             "edges": [{"source": "0.attn.q:20", "target": "0.mlp.post_act:3",
                        "weight": -0.5}]}
  path = viz.write_circuit_page(minimal, tmp_path / "x.html")
  assert "0.attn.q:20" in pathlib.Path(path).read_text()
  assert viz.normalize(minimal)["nodes"][0]["kind"] == "q"


def _make_workdir(root, circuit):
  wd = root / "run"
  for step in (200, 600):
    (wd / "checkpoints" / str(step)).mkdir(parents=True)
  (wd / "checkpoints" / "600.orbax-checkpoint-tmp-1").mkdir()
  shutil.copy(FIXTURES / "metrics_small.jsonl", wd / "metrics.jsonl")
  (wd / "circuits").mkdir(parents=True)
  (wd / "circuits" / "prune_summary.json").write_text(json.dumps({"tasks": {
      "single_double_quote": {"status": "pruned"},
      "bracket_counting": {"status": "skipped", "reason": "accuracy 0.500 "
                           "< prune.min_accuracy 0.8"}}}))
  (wd / "eval_summary.json").write_text(json.dumps({
      "lm_loss": 2.31, "tasks": {"single_double_quote": {
          "loss": 0.05, "accuracy": 0.98, "n": 128}}}))
  cdir = wd / "circuits" / "single_double_quote"
  cdir.mkdir()
  (cdir / "circuit.json").write_text(json.dumps(circuit))
  return wd


def test_run_writes_pages_exports_and_index(tmp_path, circuit, caplog):
  wd = _make_workdir(tmp_path, circuit)
  with caplog.at_level("INFO", logger="sparse_circuits"):
    written = viz.run(None, wd)
  cdir = wd / "circuits" / "single_double_quote"
  for name in ("index.html", "graph.json", "edges.csv", "graph.dot"):
    assert str(cdir / name) in written
    assert (cdir / name).stat().st_size > 0
  assert written[-1] == str(wd / "index.html")
  assert [r.getMessage() for r in caplog.records
          if r.name.startswith("sparse_circuits")] == written
  graph = json.loads((cdir / "graph.json").read_text())
  assert _pairs(graph["edges"]) == _pairs(circuit["edges"])
  index = (wd / "index.html").read_text()
  assert 'href="circuits/single_double_quote/index.html"' in index
  assert '<span class="chip">200</span>' in index
  assert '<span class="chip">600</span>' in index
  assert "orbax-checkpoint-tmp" not in index
  assert "0.980" in index and "2.3100" in index
  # weight and residual edges apart; stability, controls; skipped tasks
  assert "<td>13</td><td>2</td>" in index
  assert "12/10/14, 0.56" in index and "398 (not reached), 0.770" in index
  assert "bracket_counting" in index and "prune.min_accuracy 0.8" in index
  assert "../../index.html" in (cdir / "index.html").read_text()


def test_run_without_workdir_or_circuits_says_where(tmp_path):
  """One-line errors (RunFileError: the command line prints no traceback)."""
  missing = tmp_path / "nope"
  with pytest.raises(errors.RunFileError, match=re.escape(str(missing))):
    viz.run(None, missing)
  circuits = tmp_path / "circuits"
  with pytest.raises(errors.RunFileError, match=re.escape(str(circuits))):
    viz.run(None, tmp_path)
  bad = circuits / "single_double_quote" / "circuit.json"
  bad.parent.mkdir(parents=True)
  bad.write_text('{"task": {"na')  # cut short
  with pytest.raises(errors.RunFileError, match="not valid JSON") as e:
    viz.run(None, tmp_path)
  assert "prune.tasks=single_double_quote" in e.value.hint


# In the browser.


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
  missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
  if webdriver is None:
    missing.append("the selenium package")
  if missing:
    msg = f"browser test needs {', '.join(missing)}; run .ci/browser_setup.sh"
    if os.environ.get("SPARSE_CIRCUITS_REQUIRE_BROWSER"):
      pytest.fail(msg)
    pytest.skip(msg)
  opts = webdriver.ChromeOptions()
  opts.binary_location = CHROMIUM
  profile = tmp_path_factory.mktemp("chromium-profile")
  for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync",
               "--window-size=1440,1200", f"--user-data-dir={profile}"):
    opts.add_argument(flag)
  opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  # An explicit driver path keeps Selenium Manager from looking for (or
  # downloading) a driver or a browser.
  d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER),
                       options=opts)
  yield d
  d.quit()


@pytest.fixture
def page(driver, tmp_path, circuit, metrics):
  """Opens the fixture circuit's page; fails on any console error."""
  path = viz.write_circuit_page(circuit, tmp_path / "page", metrics)
  driver.get(pathlib.Path(path).as_uri())
  assert driver.execute_script("return document.body.dataset.ready") == "1"
  yield driver
  errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
  assert not errors, errors


def _imported_circuit() -> dict:
  """The authors' circuit of a 1-layer model, read from a viz_data dict
  (numpy, as load_viz_data returns it), compared with one node of ours."""
  shape = {"n_layer": 1, "d_model": 32, "n_head": 2, "d_head": 16,
           "d_mlp": 128}
  viz_data = {
      "circuit_data": {"0.attn.q": np.array([1, 17]),
                       "0.mlp.post_act": np.array([3]),
                       "final_resid": np.array([2])},
      "importances": {"beeg_model_config": shape, "loss": 0.1,
                      "interv_loss": 0.3, "pair_data": [],
                      "ch_interv_losses": {"0.attn.q": [0.4, 0.5],
                                           "0.mlp.post_act": [0.6],
                                           "final_resid": [0.7]}}}
  doc = authors.circuit_document(viz_data, path="viz_data.pt")
  ours = {"model": {"config": shape}, "task": {"name": "ours"},
          "nodes": [{"site": "0.attn.q", "index": 1}], "counts": {}}
  doc["overlap"] = overlap_lib.overlap(doc, ours)
  return doc


_VISIBLE_EDGES = """return [...document.querySelectorAll('.edge')]
    .filter(e => getComputedStyle(e).display !== 'none')
    .map(e => [e.dataset.source, e.dataset.target]);"""


def _node(driver, node_id):
  return driver.find_element("css selector", f'.node[data-node-id="{node_id}"]')


@pytest.mark.slow
def test_browser_draws_every_node_and_edge(page, circuit):
  ids = page.execute_script("return [...document.querySelectorAll('.node')]"
                            ".map(n => n.dataset.nodeId)")
  assert sorted(ids) == sorted(n["id"] for n in circuit["nodes"])
  visible = page.execute_script(_VISIBLE_EDGES)
  assert collections.Counter(map(tuple, visible)) == _pairs(circuit["edges"])
  n_edges = len(circuit["edges"])
  assert page.find_element("id", "edge-count").text == f"{n_edges} / {n_edges}"
  assert page.find_element("id", "weight-edge-count").text == "13 / 13"
  assert page.find_element("id", "residual-edge-count").text == "2 / 2"
  assert page.find_element("id", "node-count").text == "12 / 12"
  card = page.find_element("id", "card-edges").text
  assert "13" in card and "weights" in card
  assert "2" in page.find_element("id", "card-residual").text
  io_ids = page.execute_script("return [...document.querySelectorAll("
                               "'.io-node')].map(n => n.dataset.nodeId)")
  assert sorted(io_ids) == sorted(n["id"] for n in circuit["io_nodes"])
  assert page.find_element("id", "task-name").text == "single_double_quote"
  series = lambda chart: page.find_elements("css selector", f"{chart} .series")
  assert len(series("#chart-loss-vs-k")) == 1
  assert len(series("#chart-loss")) == 2  # loss and eval_loss


@pytest.mark.slow
def test_browser_draws_an_imported_circuit_and_its_overlap(driver, tmp_path):
  doc = _imported_circuit()
  path = viz.write_circuit_page(doc, tmp_path / "imported")
  driver.get(pathlib.Path(path).as_uri())
  assert driver.execute_script("return document.body.dataset.ready") == "1"
  ids = driver.execute_script("return [...document.querySelectorAll('.node')]"
                              ".map(n => n.dataset.nodeId)")
  assert sorted(ids) == sorted(n["id"] for n in doc["nodes"])
  text = driver.find_element("tag name", "body").text
  assert "Overlap with another circuit" in text and "Imported circuit" in text
  assert driver.find_element("id", "overlap-jaccard").text.startswith(
      "Jaccard 0.333")
  errors_ = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
  assert not errors_, errors_


def test_imported_circuit_page_without_a_browser(tmp_path):
  html = pathlib.Path(viz.write_circuit_page(
      _imported_circuit(), tmp_path / "imported")).read_text()
  assert "Jaccard 0.333: 1 shared nodes of 3." in html
  assert "0.0500" in html and "0.1000" in html  # halved, stored loss


@pytest.mark.slow
def test_browser_shows_sweep_stability_and_controls(page, circuit):
  sweep = circuit["sweep"]
  points = page.find_elements("css selector", "#chart-sweep .marker.point")
  live = [r for r in sweep if not r["diverged"]]
  assert len(points) == len(live) + 1  # and a ring on the selected one
  rows = page.find_elements("css selector", "#sweep-table tbody tr")
  assert len(rows) == len(sweep)
  assert "1 diverged" in page.find_element(
      "css selector", "#sweep-table summary").text
  st = page.find_element("id", "stability").text
  assert "12, 10, 14 nodes" in st and "0.56" in st
  assert "no seed reaches the target (circuits of 512, 398, 611 nodes)" in (
      page.find_element("id", "nonsense").text)
  rings = page.execute_script(
      "return ['all', 'some', 'one'].map(k => document.querySelectorAll("
      "'.node.seeds-' + k + ' .seed-ring').length)")
  assert rings == [8, 2, 2]
  cal = page.find_element("id", "card-circuit").text
  assert "1.310" in cal and "fitted on train" in cal
  assert "0.171" in page.find_element("id", "card-uncalibrated").text
  assert "no uncalibrated" in page.find_element("id", "card-target").text
  assert not page.find_elements("id", "flags")


@pytest.mark.slow
def test_browser_node_panel_and_screenshot(page, circuit, tmp_path):
  panel = page.find_element("id", "node-panel")
  ActionChains(page).move_to_element(_node(page, "0.attn.v:37")).perform()
  assert "0.attn.v" in panel.text  # hover shows a node
  node = next(n for n in circuit["nodes"] if n["id"] == "1.mlp.post_act:37")
  _node(page, node["id"]).click()  # click pins one
  assert node["site"] in panel.text
  assert "+0.910" in panel.text  # its ablation delta
  n_tokens = sum(len(e["prompt_tokens"]) + len(e["pair_prompt_tokens"])
                 for e in circuit["task"]["examples"])
  n_tokens += sum(len(s["tokens"]) for s in node["top_snippets"])
  assert len(panel.find_elements("css selector", ".tok")) == n_tokens
  shot = tmp_path / "viewer.png"
  assert page.save_screenshot(str(shot))
  assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_browser_threshold_hides_weak_edges(page, circuit):
  threshold = page.execute_script("""
      const s = document.getElementById('edge-threshold');
      s.value = arguments[0];
      s.dispatchEvent(new Event('input', {bubbles: true}));
      return parseFloat(s.value);""", 0.7)
  strong = [e for e in circuit["edges"] if abs(e["weight"]) >= threshold]
  visible = page.execute_script(_VISIBLE_EDGES)
  assert 0 < len(visible) < len(circuit["edges"])
  assert collections.Counter(map(tuple, visible)) == _pairs(strong)
  counts = page.find_element("id", "edge-count").text
  assert counts == f"{len(strong)} / {len(circuit['edges'])}"


@pytest.mark.slow
def test_browser_export_buttons_download_the_files(page, circuit):
  downloads = page.execute_script("""
      const got = [], click = HTMLAnchorElement.prototype.click;
      HTMLAnchorElement.prototype.click = function () { got.push(this); };
      for (const id of ['export-json', 'export-csv', 'export-dot'])
        document.getElementById(id).click();
      HTMLAnchorElement.prototype.click = click;
      return Promise.all(got.map(a => fetch(a.href).then(r => r.text())
          .then(text => [a.download, text])));""")
  files = dict(downloads)
  assert set(files) == {"single_double_quote_graph.json",
                        "single_double_quote_edges.csv",
                        "single_double_quote_graph.dot"}
  assert files["single_double_quote_edges.csv"] == viz.edges_csv(circuit)
  assert files["single_double_quote_graph.dot"] == viz.graph_dot(circuit)
  assert json.loads(files["single_double_quote_graph.json"]) == (
      viz.graph_dict(circuit))

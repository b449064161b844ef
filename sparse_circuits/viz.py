"""Circuit viewer and run report (`--mode=report`): self-contained HTML pages.

Each page is one file that opens from disk with no server and no network: the
page data is embedded as JSON and the drawing code (`viz_assets/viewer.js`,
plain JS writing SVG) and styles (`viz_assets/viewer.css`) are inlined.

- `write_circuit_page(circuit, out_path, metrics)`: one `circuit.json` (the
  prune program's output, paper §2.2) drawn from the input tokens to the
  candidate logits, weight edges solid and residual connections dashed,
  nodes ringed by how many stability seeds kept them, with a node panel
  (token heatmaps, top snippets, ablation effect), an edge-weight threshold,
  the loss-vs-k curve, the sweep (nodes vs loss per setting), the stability
  and nonsense-control results and training curves.
- `write_run_index(workdir)`: checkpoints, eval table, training curves and
  every pruned task (nodes, weight edges, losses, stability, controls,
  flags) or skipped one (why), with links to the circuit pages.
- `run(config, workdir)`: pages, export files (graph.json, edges.csv,
  graph.dot) and the index for every `workdir/circuits/<task>/circuit.json`.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import pathlib
from typing import Any

from sparse_circuits import checkpoints
from sparse_circuits import errors
from sparse_circuits import layout
from sparse_circuits import reporting
from sparse_circuits import sites as sites_lib

_log = reporting.get(__name__)

_ASSETS = pathlib.Path(__file__).with_name("viz_assets")
_METRIC_KEYS = ("step", "loss", "eval_loss", "l0_total", "lr")
_MAX_METRIC_ROWS = 2000  # thinned beyond this: the curves need no more
_NODE_EXPORT_KEYS = ("id", "site", "layer", "kind", "index", "head", "tau",
                     "mean", "ablation_delta")
_DOT_FILL = {"resid_read": "#99f6e4", "resid_write": "#ddd6fe", "q": "#fbcfe8",
             "k": "#fde68a", "v": "#d9f99d", "mlp_neuron": "#fed7aa"}
POSITIVE, NEGATIVE = "#2563eb", "#dc2626"  # edge colours, also in viewer.css


def _clean(x: Any) -> Any:
  """JSON-safe copy: NaN/inf -> None (invalid JSON), numpy -> list."""
  if isinstance(x, dict):
    return {str(k): _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if hasattr(x, "tolist"):  # numpy arrays and scalars
    return _clean(x.tolist())
  return x


def _num(x: Any) -> float:
  try:
    return float(x)
  except (TypeError, ValueError):
    return float("nan")


def normalize(circuit: dict) -> dict:
  """Fills the derivable node fields (id, layer, kind, head) a circuit omits."""
  c = dict(circuit)
  cfg = (c.get("model") or {}).get("config") or {}
  d_head = cfg.get("d_head")
  nodes = []
  for n in c.get("nodes") or []:
    n = dict(n)
    layer, _, sub = str(n.get("site", "")).partition(".")
    n.setdefault("id", f"{n.get('site')}:{n.get('index')}")
    n.setdefault("layer", int(layer) if layer.isdigit() else 0)
    n.setdefault("kind", sites_lib.kind(sub) or sub)
    if (n.get("head") is None and n["kind"] in ("q", "k", "v") and d_head
        and isinstance(n.get("index"), int)):
      n["head"] = n["index"] // d_head
    nodes.append(n)
  c["nodes"] = nodes
  c["edges"] = [dict(e) for e in c.get("edges") or []]
  c["io_nodes"] = [dict(n) for n in c.get("io_nodes") or []]
  c["task"] = c.get("task") or {}
  return c


def read_metrics(path: str | os.PathLike) -> list[dict]:
  """Rows of a metrics.jsonl; [] if absent. Skips a partly written last line."""
  p = pathlib.Path(path)
  if not p.is_file():
    return []
  rows = []
  for line in p.read_text(encoding="utf-8").splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict):
      rows.append(row)
  return rows


def _thin_metrics(rows: list[dict]) -> list[dict]:
  """Keeps the plotted fields, every eval row and at most ~2000 train rows."""
  rows = [{k: r[k] for k in _METRIC_KEYS if k in r}
          for r in rows if "step" in r]
  stride = math.ceil(len(rows) / _MAX_METRIC_ROWS) if rows else 1
  return [r for i, r in enumerate(rows)
          if i % stride == 0 or "eval_loss" in r or i == len(rows) - 1]


def graph_dict(circuit: dict) -> dict:
  """The graph alone: nodes (scalar fields only) and edges."""
  c = normalize(circuit)
  return {"nodes": [{k: n[k] for k in _NODE_EXPORT_KEYS if k in n}
                    for n in c["nodes"]] + c["io_nodes"],
          "edges": [{k: e[k] for k in ("source", "target", "weight", "kind")
                     if k in e} for e in c["edges"]]}


def edges_csv(circuit: dict) -> str:
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["source", "target", "weight", "kind"])
  for e in circuit.get("edges") or []:
    writer.writerow([e["source"], e["target"], repr(_num(e.get("weight"))),
                     e.get("kind", "weight")])
  return buf.getvalue()


def _dot_str(s: Any) -> str:
  return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def graph_dot(circuit: dict) -> str:
  """Graphviz DOT, embedding at the bottom; one cluster per layer; edge label =
  weight, colour = sign, pen width = |weight|."""
  c = normalize(circuit)
  name = c["task"].get("name") or "circuit"
  weights = [abs(_num(e.get("weight"))) for e in c["edges"]]
  max_abs = max([w for w in weights if math.isfinite(w)] or [1.0]) or 1.0
  lines = [f"digraph {_dot_str(name)} {{", "  rankdir=BT;",
           '  node [shape=box, style="rounded,filled", fontsize=10];']
  for layer in sorted({n["layer"] for n in c["nodes"]}):
    lines.append(f'  subgraph "cluster_layer{layer}" {{')
    lines.append(f'    label="layer {layer}";')
    for n in c["nodes"]:
      if n["layer"] == layer:
        label = _dot_str(n["site"])[:-1] + f'\\n#{n.get("index")}"'
        fill = _DOT_FILL.get(n["kind"], "#e2e8f0")
        lines.append(f'    {_dot_str(n["id"])} [label={label}, '
                     f'fillcolor="{fill}"];')
    lines.append("  }")
  for kind, rank in (("embed", "source"), ("logit", "sink")):
    io = [n for n in c["io_nodes"] if n.get("kind") == kind]
    if io:
      lines.append(f"  {{ rank={rank};")
      for n in io:
        lines.append(f'    {_dot_str(n["id"])} [label='
                     f'{_dot_str(n.get("token", n["id"]))}, shape=note];')
      lines.append("  }")
  for e in c["edges"]:
    w = _num(e.get("weight"))
    width = 0.5 + 3.5 * abs(w) / max_abs if math.isfinite(w) else 0.5
    color = POSITIVE if w >= 0 else NEGATIVE
    style = ", style=dashed" if e.get("kind") == "residual" else ""
    lines.append(f'  {_dot_str(e["source"])} -> {_dot_str(e["target"])} '
                 f'[label="{w:.6g}", color="{color}", '
                 f'penwidth={width:.2f}{style}];')
  lines.append("}")
  return "\n".join(lines) + "\n"


def write_exports(circuit: dict, out_dir: str | os.PathLike) -> list[str]:
  """Writes graph.json, edges.csv and graph.dot into out_dir."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  files = {"graph.json": json.dumps(_clean(graph_dict(circuit)), indent=1),
           "edges.csv": edges_csv(circuit), "graph.dot": graph_dot(circuit)}
  for name, text in files.items():
    (out / name).write_text(text, encoding="utf-8")
  return [str(out / name) for name in files]


def _page(title: str, body: str, data: dict) -> str:
  css = (_ASSETS / "viewer.css").read_text(encoding="utf-8")
  js = (_ASSETS / "viewer.js").read_text(encoding="utf-8")
  # "<", ">", "&" only occur inside JSON strings, where \u escapes are valid;
  # this keeps "</script>" in a token from ending the data block.
  blob = json.dumps(_clean(data), separators=(",", ":"), allow_nan=False)
  blob = (blob.replace("<", "\\u003c").replace(">", "\\u003e")
          .replace("&", "\\u0026"))
  return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
          '<meta name="viewport" content="width=device-width, '
          'initial-scale=1">\n'
          f"<title>{html.escape(title)}</title>\n<style>\n{css}</style>\n"
          f"</head>\n<body>\n{body}\n"
          f'<script type="application/json" id="page-data">{blob}</script>\n'
          f"<script>\n{js}</script>\n</body>\n</html>\n")


def write_circuit_page(circuit: dict, out_path: str | os.PathLike,
                       metrics: list[dict] | None = None, *,
                       index_href: str | None = None,
                       steer: dict | None = None) -> str:
  """Writes the viewer for one circuit; returns the file's path.

  out_path is the .html file or a directory (then DIR/index.html). metrics are
  metrics.jsonl rows for the training curves; index_href links back to the run
  index.
  """
  out = pathlib.Path(out_path)
  if out.suffix != ".html":
    out = out / "index.html"
  out.parent.mkdir(parents=True, exist_ok=True)
  c = normalize(circuit)
  name = str(c["task"].get("name") or "circuit")
  data = {"page": "circuit", "circuit": c, "index_href": index_href,
          "metrics": _thin_metrics(metrics or []),
          "exports": {"json": json.dumps(_clean(graph_dict(c)), indent=1),
                      "csv": edges_csv(c), "dot": graph_dot(c)}}
  body = (f'<div id="app"><noscript>Circuit {html.escape(name)}: this page '
          "draws with JavaScript.</noscript></div>")
  if steer:
    body += _steer_section(steer)
  if c.get("imported") or c.get("overlap"):
    body += ('<div class="page">' + _imported_section(c)
             + _overlap_section(c.get("overlap")) + "</div>")
  out.write_text(_page(f"{name} — circuit", body, data), encoding="utf-8")
  return str(out)


def steer_svg(doc: dict, key: str = "p_counterfactual_binary",
              width: int = 420, height: int = 260) -> str:
  """A line plot of one curve of the sweep (`key`): the bridge direction
  against the random controls (thin) and their mean (dashed)."""
  xs, pad = doc["strengths"], 40
  bridge, mean = doc[key], doc[f"{key}_random_mean"]
  randoms = list(doc[f"{key}_random"].values())
  top = max(1e-6, max(max(y) for y in (bridge, mean, *randoms))) * 1.05
  x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

  def pts(y):
    return " ".join(
        f"{pad + (x - x0) / (x1 - x0) * (width - 1.5 * pad):.1f},"
        f"{height - pad - v / top * (height - 1.5 * pad):.1f}"
        for x, v in zip(xs, y))

  lines = [f'<polyline points="{pts(y)}" fill="none" stroke="#bbb" '
           'stroke-width="1"/>' for y in randoms]
  lines.append(f'<polyline points="{pts(mean)}" fill="none" stroke="#888" '
               'stroke-width="2" stroke-dasharray="5,4"/>')
  lines.append(f'<polyline points="{pts(bridge)}" fill="none" '
               'stroke="#d62728" stroke-width="2.5"/>')
  what = ("of the two candidates" if key.endswith("binary")
          else "over the vocabulary")
  axes = (f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad / 2}" '
          f'y2="{height - pad}" stroke="#444"/><line x1="{pad}" '
          f'y1="{pad / 2}" x2="{pad}" y2="{height - pad}" stroke="#444"/>'
          f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle" '
          f'font-size="12">steering strength ({x0:g} to {x1:g})</text>'
          f'<text x="12" y="{height / 2}" font-size="12" '
          f'transform="rotate(-90 12 {height / 2})" text-anchor="middle">'
          f'P(counterfactual answer) {what}, max {top / 1.05:.3g}</text>'
          f'<text x="{pad + 8}" y="{pad / 2 + 12}" font-size="12" '
          'fill="#d62728">bridge direction</text>'
          f'<text x="{pad + 8}" y="{pad / 2 + 26}" font-size="12" '
          'fill="#888">random, same norm</text>')
  return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
          f'height="{height}" role="img">{axes}{"".join(lines)}</svg>')


def _steer_section(doc: dict) -> str:
  """The steering sweep (steer.json) as plots and one line of figures."""
  node, p = doc["node"], doc["p_counterfactual_binary"]
  r = doc["p_counterfactual_binary_random_mean"]
  text = (f"Dense model steered through sparse node "
          f"<code>{html.escape(str(node['site']))}:{node['index']}</code> "
          f"(bridge {doc['bridge']}, {doc['n_prompts']} prompts): "
          f"P(counterfactual answer) of the task's two candidates "
          f"{_f(p[0])} &rarr; {_f(p[-1])}; random direction of the same "
          f"norm {_f(r[0])} &rarr; {_f(r[-1])}.")
  plots = steer_svg(doc) + steer_svg(doc, "p_counterfactual")
  return ('<div class="page">' + _section(
      "Steering the dense model", f"<p>{text}</p>" + plots) + "</div>")


def _imported_section(c: dict) -> str:
  """What an imported circuit (authors.py) brings that ours do not: its
  stored and halved losses, its ablation-delta edges, its prune_config."""
  imp = c.get("imported")
  if not imp:
    return ""
  esc = html.escape
  losses, stored = c.get("losses") or {}, imp.get("stored_losses") or {}
  rows = [["full model", _f(losses.get("full_model")), _f(stored.get("loss"))],
          ["circuit", _f(losses.get("circuit")),
           _f(stored.get("interv_loss"))]]
  ts = c.get("task_samples_eval") or {}
  for key, what in (("full_model", "full model"),
                    ("circuit", "circuit (this project's means)")):
    if ts.get(key):
      rows.append([f"{what} on their task samples, evaluated here",
                   _f(ts[key].get("loss")), "—"])
  edges = sorted(imp.get("edges") or [], key=lambda e: -abs(_num(e["delta"])))
  top = [[esc(e["source"]), esc(e["target"]), f'{_num(e["delta"]):+.4g}']
         for e in edges[:20]]
  where = " / ".join(esc(str(imp.get(k))) for k in ("model", "task_dir",
                                                     "sweep", "k")
                     if imp.get(k))
  body = (f'<p>Read from <code>{esc(str(imp.get("path")))}</code>'
          + (f" ({where})" if where else "") + ".</p>"
          + _table(["Loss", "Per prompt (halved)", "Stored (pair sum)"], rows)
          + f'<p class="muted">{esc(str(imp.get("loss_convention", "")))}</p>'
          + f"<h3>Their edges: ablation deltas, not weights "
          f"({len(edges)})</h3>"
          + (_table(["Source", "Target", "Delta"], top) if top else
             '<p class="muted">none</p>')
          + "<h3>Their prune_config</h3><pre>"
          + esc(json.dumps(_clean(c.get("prune_config")), indent=1))
          + "</pre>")
  return _section("Imported circuit (the authors' viz_data.pt)", body)


def _overlap_section(ov: dict | None) -> str:
  """Node-set overlap with another circuit of the same model
  (circuits/overlap.py), as a table by site."""
  if not ov:
    return ""
  esc = html.escape
  a, b = ov["a"], ov["b"]
  rows = [[esc(site), str(len(v["shared"])), str(len(v["only_a"])),
           str(len(v["only_b"])), _f(v["jaccard"], 2)]
          for site, v in ov["by_site"].items()]
  rows.append(["<b>all</b>", str(ov["shared"]), str(ov["only_a"]),
               str(ov["only_b"]), _f(ov["jaccard"], 3)])
  names = (f'a = {esc(str(a.get("name")))} ({esc(str(a.get("source")))}, '
           f'{a["nodes"]} nodes, {esc(str(a.get("edges")))} weight edges); '
           f'b = {esc(str(b.get("name")))} ({esc(str(b.get("source")))}, '
           f'{b["nodes"]} nodes, {esc(str(b.get("edges")))} weight edges; '
           f'{esc(str(b.get("path")))})')
  nc = ov.get("not_compared") or {}
  skipped = (f'<p class="muted">Not compared (no such node in the other '
             f'kind of circuit): a {len(nc.get("a", []))}, b '
             f'{len(nc.get("b", []))}.</p>')
  return _section(
      "Overlap with another circuit",
      f'<p id="overlap-jaccard">Jaccard {_f(ov["jaccard"], 3)}: '
      f'{ov["shared"]} shared nodes of {ov["union"]}.</p><p>{names}</p>'
      + _table(["Site", "Shared", "Only a", "Only b", "Jaccard"], rows)
      + skipped)


def _table(header: list[str], rows: list[list[str]]) -> str:
  head = "".join(f"<th>{h}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in r) + "</tr>"
                 for r in rows)
  return (f'<table class="data"><thead><tr>{head}</tr></thead>'
          f"<tbody>{body}</tbody></table>")


def _f(x: Any, digits: int = 4) -> str:
  x = _num(x)
  return f"{x:.{digits}f}" if math.isfinite(x) else "—"


def _section(title: str, content: str) -> str:
  return f'<section class="card"><h2>{title}</h2>{content}</section>'


def _eval_table(path: pathlib.Path) -> str:
  if not path.is_file():
    return '<p class="muted">No eval_summary.json.</p>'
  try:
    summary = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as err:
    return (f'<p class="warn">{html.escape(str(path))} unreadable: '
            f"{html.escape(str(err))}</p>")
  rows = [[html.escape(str(k)), _f(v.get("loss")), _f(v.get("accuracy"), 3),
           _f(v.get("pair_accuracy"), 3), html.escape(str(v.get("n", "—")))]
          for k, v in sorted((summary.get("tasks") or {}).items())]
  return (f'<p>LM loss (held-out): <b>{_f(summary.get("lm_loss"))}</b></p>'
          + _table(["Task", "Loss", "Accuracy", "Pairs right", "n"], rows))


def _circuit_row(wd: pathlib.Path, path: pathlib.Path, c: dict) -> list[str]:
  esc = html.escape
  c, losses, counts = normalize(c), c.get("losses") or {}, c.get("counts") or {}
  href = f"circuits/{path.parent.name}/index.html"
  link = (f'<a href="{esc(href)}">open viewer</a>'
          if (wd / href).is_file() else "no page yet")
  weight = counts.get("edges") if "residual_edges" in counts else None
  if weight is None:  # schema 1 counted residual connections as edges
    weight = sum(e.get("kind") != "residual" for e in c["edges"])
  resid = sum(e.get("kind") == "residual" for e in c["edges"])
  st, ns = c.get("stability"), c.get("nonsense_control")
  rc = c.get("random_init_control") or {}
  seeds = (f'{"/".join(map(str, st["nodes"]))}, {_f(st["mean_jaccard"], 2)}'
           if st else "—")
  best = (ns or {}).get("best") or {}
  nonsense = (f'{best.get("nodes")}{"" if best.get("reached_train") else " (not reached)"}'
              f', {_f(best.get("test_loss"), 3)}' if ns else "—")
  flags = c.get("flags") or []
  return [esc(str(c["task"].get("name") or path.parent.name)),
          str(len(c["nodes"])), str(weight), str(resid),
          f'{_f(losses.get("circuit"))} / '
          f'{_f(losses.get("circuit_uncalibrated"))}',
          _f(losses.get("target", c["task"].get("target_loss"))),
          _f(losses.get("full_model")), esc(seeds), esc(nonsense),
          _f(rc.get("loss", losses.get("random_init_control"))),
          ('<span class="warn">' + "<br>".join(esc(f) for f in flags) +
           "</span>") if flags else "none", link]


def _skipped(path: pathlib.Path) -> str:
  """The tasks the last --mode=prune skipped, and why."""
  if not path.is_file():
    return ""
  try:
    summary = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError):
    return ""
  rows = [[html.escape(n), html.escape(str(t.get("reason", "")))]
          for n, t in (summary.get("tasks") or {}).items()
          if t.get("status") == "skipped"]
  if not rows:
    return ""
  return ("<h3>Not pruned</h3>" + _table(["Task", "Why"], rows))


def _circuit_files(where: layout.Layout) -> list[pathlib.Path]:
  """Every WORKDIR/circuits/<task>/circuit.json, by task name."""
  return sorted(pathlib.Path(where.circuits).glob(
      f"*/{os.path.basename(where.circuit('x'))}"))


def write_run_index(workdir: str | os.PathLike) -> str:
  """Writes workdir/index.html (checkpoints, eval table, curves, circuits)."""
  wd = pathlib.Path(workdir)
  if not wd.is_dir():
    raise errors.RunFileError(f"run index: workdir {wd} does not exist")
  esc = html.escape
  where = layout.Layout(wd)
  ckpt_dir = where.checkpoints
  steps = checkpoints.all_steps(str(wd))
  metrics = read_metrics(where.metrics)

  rows = []
  for path in _circuit_files(where):
    try:
      c = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
      rows.append([esc(path.parent.name), f"unreadable: {esc(str(err))}"]
                  + [""] * 10)
      continue
    rows.append(_circuit_row(wd, path, c))
  circuits = (_table(["Task", "Nodes", "Edges (weights)", "Residual edges",
                      "Circuit loss (calibrated / raw)", "Target",
                      "Full model", "Seeds: nodes, Jaccard",
                      "Nonsense control: nodes, test loss",
                      "Random-init", "Flags", ""], rows)
              if rows else
              '<p class="muted">No circuits yet (--mode=prune).</p>')
  circuits += _skipped(pathlib.Path(where.prune_summary))

  evals = _eval_table(pathlib.Path(where.eval_summary))
  chips = "".join(f'<span class="chip">{s}</span>' for s in steps)
  ckpts = (f'<p class="muted">{esc(str(ckpt_dir))}</p>'
           f'<div class="chips">{chips}</div>'
           if steps else '<p class="muted">No checkpoints.</p>')
  last = metrics[-1] if metrics else {}
  sub = (f"{len(metrics)} metric rows, last step {last.get('step', '—')}, "
         f"loss {_f(last.get('loss'))}" if metrics else "no metrics.jsonl")
  body = (f'<div class="page"><header class="top"><h1>Run report</h1>'
          f'<p class="muted">{esc(str(wd.resolve()))} · {esc(sub)}</p>'
          "</header>"
          + _section("Circuits", circuits) + _section("Evaluation", evals)
          + _section("Training curves", '<div id="training-plots"></div>')
          + _section("Checkpoints", ckpts) + "</div>")
  out = pathlib.Path(where.index)
  out.write_text(_page(f"Run report — {wd.name}", body,
                       {"page": "index", "metrics": _thin_metrics(metrics)}),
                 encoding="utf-8")
  return str(out)


def run(config: Any, workdir: str | os.PathLike) -> list[str]:
  """--mode=report: a page and exports per circuit, then the run index."""
  del config  # everything comes from what earlier modes wrote into workdir
  wd = pathlib.Path(workdir)
  if not wd.is_dir():
    raise errors.RunFileError(
        f"--mode=report: workdir {wd} does not exist; train and prune first")
  where = layout.Layout(wd)
  circuit_files = _circuit_files(where)
  if not circuit_files:
    raise errors.RunFileError(
        f"--mode=report: no circuits in {where.circuits} (want "
        "<task>/circuit.json, written by --mode=prune)")
  metrics = read_metrics(where.metrics)
  written = []
  for path in circuit_files:
    try:
      circuit = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
      raise errors.RunFileError(
          f"--mode=report: {path} is not valid JSON: {err}",
          hint="prune that task again (--mode=prune --config.prune.tasks="
          f"{path.parent.name})") from err
    steer_path = path.parent / "steer.json"
    steer = (json.loads(steer_path.read_text(encoding="utf-8"))
             if steer_path.is_file() else None)
    written.append(write_circuit_page(circuit, path.parent / "index.html",
                                      metrics, index_href="../../index.html",
                                      steer=steer))
    written += write_exports(circuit, path.parent)
  written.append(write_run_index(wd))
  for p in written:
    _log.info(p)
  return written

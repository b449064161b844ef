"""The compare page: WORKDIR/compare/index.html, one self-contained file.

The frontier plot (held-out LM loss vs geometric-mean circuit edges, log
scale, one line per family: the paper's Figure 2) and the per-task bars are
drawn with matplotlib and inlined as SVG (no script, no network); the same
frontier is also written as frontier.png for a README. Links go to each
circuit's viewer page in the models' own workdirs.
"""

from __future__ import annotations

import html
import io
import os

COLORS = {"sparse": "#2563eb", "dense": "#ea580c"}
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;
color:#111;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.muted{color:#666}.headline{font-size:18px;margin:12px 0}
table{border-collapse:collapse;margin:8px 0}
td,th{border-bottom:1px solid #ddd;padding:3px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}
.plot svg{max-width:100%;height:auto}
.warn{color:#b91c1c}
"""


def _svg(fig) -> str:
  buf = io.BytesIO()
  fig.savefig(buf, format="svg", metadata={"Date": None},
              bbox_inches="tight")
  text = buf.getvalue().decode("utf-8")
  return text[text.index("<svg"):]


def _by_family(summary):
  out = {f: [] for f in COLORS}
  for name, m in summary["models"].items():
    if "geomean_edges" in m:
      out[m["family"]].append((m["lm_loss"], name, m))
  return {f: sorted(v) for f, v in out.items()}


def frontier_figure(summary):
  """Loss vs geometric-mean edges (log), one line per family, bootstrap
  intervals as error bars, each sparse model's matched dense point."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.8, 4.4))
  ax = fig.add_subplot()
  for fam, pts in _by_family(summary).items():
    if not pts:
      continue
    x = [p[0] for p in pts]
    y = [p[2]["geomean_edges"] for p in pts]
    err = [[yy - p[2]["geomean_edges_ci"][0] for yy, p in zip(y, pts)],
           [p[2]["geomean_edges_ci"][1] - yy for yy, p in zip(y, pts)]]
    ax.errorbar(x, y, yerr=err, color=COLORS[fam], marker="o", capsize=3,
                label=f"{fam} ({len(pts)} models)")
    for xx, yy, p in zip(x, y, pts):
      ax.annotate(p[1], (xx, yy), textcoords="offset points", xytext=(5, 5),
                  fontsize=7, color=COLORS[fam])
  for r in summary.get("matched", []):
    ax.plot([r["lm_loss"]], [r["dense_edges_at_loss"]], marker="o",
            mfc="none", color=COLORS["dense"], linestyle="none")
    ax.plot([r["lm_loss"]] * 2, [r["sparse_edges"], r["dense_edges_at_loss"]],
            color="#888", linestyle=":", linewidth=1)
  ax.set_yscale("log")
  ax.set_xlabel("held-out LM loss (pretraining)")
  n = len(summary["compared_tasks"])
  ax.set_ylabel(f"geometric-mean circuit edges ({n} tasks)")
  ax.set_title("circuit size vs pretraining loss (lower left is better)",
               fontsize=10)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  return fig


def task_bars_figure(summary):
  """Weight edges per task (log), one bar per model, sparse then dense."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  tasks = [t for t, s in summary["tasks"].items()
           if s["status"] in ("compared", "dropped")]
  models = sorted(summary["models"].items(),
                  key=lambda kv: (kv[1]["family"], kv[1]["lm_loss"]))
  fig = Figure(figsize=(max(6.0, 0.9 * len(tasks) * len(models) / 3), 4.0))
  ax = fig.add_subplot()
  width = 0.8 / max(len(models), 1)
  shades = {f: 0 for f in COLORS}
  for k, (name, m) in enumerate(models):
    fam = m["family"]
    alpha = 1.0 - 0.5 * shades[fam] / max(
        1, sum(mm["family"] == fam for _, mm in models) - 1)
    shades[fam] += 1
    ys = [max(m["tasks"].get(t, {}).get("edges", 0), 1) for t in tasks]
    ax.bar([i + (k - (len(models) - 1) / 2) * width for i in
            range(len(tasks))], ys, width, color=COLORS[fam], alpha=alpha,
           label=name)
  ax.set_yscale("log")
  ax.set_xticks(range(len(tasks)))
  ax.set_xticklabels([t + ("*" if summary["tasks"][t]["status"] == "dropped"
                           else "") for t in tasks], rotation=30, ha="right",
                     fontsize=8)
  ax.set_ylabel("circuit weight edges")
  ax.legend(fontsize=7, ncol=2)
  ax.grid(True, axis="y", which="both", alpha=0.3)
  return fig


def _table(header, rows) -> str:
  th = "".join(f"<th>{h}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
                 for r in rows)
  return f"<table><tr>{th}</tr>{body}</table>"


def _lr(lr) -> str:
  """The chosen LR and, with the LR rule, its multiple of the recipe's."""
  if not lr or lr.get("chosen") is None:
    return ""
  return f"{lr['chosen']:.3g}" + (f" (×{lr['multiplier']:g})"
                                  if "multiplier" in lr else "")


def _ci(v) -> str:
  return f"[{v[0]:.1f}, {v[1]:.1f}]" if v else ""


_QUANTITY_LABELS = {
    "nodes": "nodes", "pairs_per_node": "connectable pairs per node",
    "density": "effective density (edges ÷ pairs)",
    "edges": "weight edges (= the three above)",
    "edges_per_node": "edges per node", "hidden_edges": "hidden edges",
    "io_edges": "embedding + unembedding edges"}


def decomposition_section(dec: dict) -> str:
  """The ratio taken apart (decomposition.py): per sparse model, each
  quantity's geometric mean, the dense frontier's at its loss and the
  ratio, then the ratio per task."""
  esc = html.escape
  out = ["<h2>The ratio taken apart</h2>"]
  for name, row in dec["models"].items():
    tasks = list(row["tasks"])
    out.append(f"<p><b>{esc(name)}</b> (LM loss {row['lm_loss']:.4f})</p>"
               + _table(
                   ["quantity", "sparse (gm)", "dense at loss", "ratio"]
                   + [esc(t) for t in tasks],
                   [[_QUANTITY_LABELS[q], f"{row['geomean'][q]['sparse']:.3g}",
                     f"{row['geomean'][q]['dense_at_loss']:.3g}",
                     f"{row['geomean'][q]['ratio']:.2f}×"]
                    + [f"{row['tasks'][t][q]['ratio']:.2f}×" for t in tasks]
                    for q in dec["quantities"]]))
  out.append('<p class="muted">Edges = nodes × connectable pairs per node × '
             "effective density, so the edge ratio is the product of the "
             "first three ratios. Pairs: kept nodes (and the task's tokens) "
             "a weight could join. Hidden: edges inside blocks.</p>")
  return "".join(out)


def page(summary: dict) -> str:
  esc = html.escape
  h = summary.get("headline")
  if h:
    head = (f'<p class="headline">Dense / sparse geometric-mean circuit '
            f'edges at matched loss: <b>{h["ratio"]:.2f}×</b> (95% bootstrap '
            f'interval {h["ratio_ci"][0]:.2f}–{h["ratio_ci"][1]:.2f}) over '
            f'{h["n_tasks"]} tasks'
            + (' <span class="warn">(extrapolated beyond the dense models\''
               ' losses)</span>' if h["extrapolated"] else "") + "</p>")
  else:
    head = ('<p class="headline warn">No task is learned by every model: no '
            "circuits compared.</p>")
  for a, s in (summary.get("by_ablation") or {}).items():
    sh = s.get("headline")
    if a != summary.get("ablation") and sh:
      head += (f'<p>Under {esc(a)} ablation: <b>{sh["ratio"]:.2f}×</b> '
               f'({sh["ratio_ci"][0]:.2f}–{sh["ratio_ci"][1]:.2f}) over '
               f'{sh["n_tasks"]} tasks.</p>')
  if h and summary.get("ablation"):
    head += (f'<p class="muted">Headline: {esc(summary["ablation"])} '
             "ablation.</p>")
  parts = [f"<h1>Sparse vs dense circuits</h1>{head}"]
  if h:
    parts.append('<div class="plot">' + _svg(frontier_figure(summary))
                 + "</div>")
    parts.append("<h2>Matched loss</h2>" + _table(
        ["sparse model", "LM loss", "sparse edges", "dense edges at loss",
         "ratio", "95% interval", "dense models used"],
        [[esc(r["sparse"]), f"{r['lm_loss']:.4f}", f"{r['sparse_edges']:.1f}",
          f"{r['dense_edges_at_loss']:.1f}", f"{r['ratio']:.2f}×",
          f"{r['ratio_ci'][0]:.2f}–{r['ratio_ci'][1]:.2f}",
          esc(" & ".join(r["dense_models"]))
          + (' <span class="warn">extrapolated</span>'
             if r["extrapolated"] else "")]
         for r in summary.get("matched", [])]))
  if summary.get("decomposition"):
    parts.append(decomposition_section(summary["decomposition"]))
  models = sorted(summary["models"].items(),
                  key=lambda kv: (kv[1]["family"], kv[1]["lm_loss"]))
  parts.append("<h2>Models</h2>" + _table(
      ["model", "family", "d_model", "LR", "LM loss",
       "L0 (nonzero weights)", "gm edges", "95% interval", "gm nodes", "run"],
      [[esc(n), m["family"], m["d_model"], _lr(m.get("lr")),
        f"{m['lm_loss']:.4f}",
        f"{m['l0']:,} of {m['matrix_entries']:,}",
        f"{m.get('geomean_edges', float('nan')):.1f}",
        _ci(m.get("geomean_edges_ci")),
        f"{m.get('geomean_nodes', float('nan')):.1f}",
        f'<a href="../{esc(n)}/index.html">report</a>'] for n, m in models]))
  tasks = [t for t, s in summary["tasks"].items()
           if s["status"] in ("compared", "dropped")]
  if tasks:
    parts.append("<h2>Per task</h2>" + '<div class="plot">'
                 + _svg(task_bars_figure(summary)) + "</div>")
    rows = []
    for t in tasks:
      cells = [esc(t) + ("*" if summary["tasks"][t]["status"] == "dropped"
                         else ""), f"{summary['tasks'][t]['target']:.4f}"]
      for _, m in models:
        r = m["tasks"][t]
        cells.append(f'<a href="{esc(r["viewer"])}">{r["edges"]:,} / '
                     f'{r["nodes"]:,}</a>'
                     + ("" if r["reached"] else ' <span class="warn">'
                        "missed</span>"))
      rows.append(cells)
    parts.append(_table(["task", "target loss"] + [esc(n) for n, _ in models],
                        rows)
                 + '<p class="muted">Cells: weight edges / nodes, linked to '
                 "the circuit's viewer. * dropped from the means (reason "
                 "below).</p>")
  other = [(t, s) for t, s in summary["tasks"].items()
           if s["status"] != "compared"]
  if other:
    parts.append("<h2>Tasks not compared</h2><ul>" + "".join(
        f"<li><b>{esc(t)}</b> ({s['status']}): {esc(s['reason'])}</li>"
        for t, s in other) + "</ul>")
  b = summary["bootstrap"]
  parts.append(
      '<h2>How</h2><p class="muted">Tasks: learned by every model '
      f"({esc(summary.get('select_by', 'accuracy'))} ≥ "
      f"{summary['min_accuracy']} of the held-out pairs). Target rule: "
      f"{esc(summary['target_rule'])}. Edges: nonzero weights between kept "
      "nodes; a geometric mean counts 0 edges as 1. Intervals: "
      f"{b['n']} bootstrap resamples of the tasks (seed {b['seed']}). "
      "Matched loss: log-edges of the dense frontier linear in loss between "
      "the two nearest dense models. LR: each model's best held-out loss "
      "of the trials in summary.json (models.NAME.lr). Details: the "
      "docstring of "
      "sparse_circuits/experiments/compare.py.</p>")
  return ("<!doctype html><html><head><meta charset='utf-8'>"
          "<title>Sparse vs dense circuits</title>"
          f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")


def write(summary: dict, out_dir: str) -> str:
  """index.html (and frontier.png when circuits were compared)."""
  path = os.path.join(out_dir, "index.html")
  with open(path, "w", encoding="utf-8") as f:
    f.write(page(summary))
  if summary.get("headline"):
    frontier_figure(summary).savefig(os.path.join(out_dir, "frontier.png"),
                                     dpi=150, bbox_inches="tight")
  return path

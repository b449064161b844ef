// Circuit viewer: draws the page data that sparse_circuits/viz.py embeds in
// #page-data as inline SVG. Plain JS, no dependencies, works from file://.
(function () {
  "use strict";
  const SVGNS = "http://www.w3.org/2000/svg";
  const DATA = JSON.parse(document.getElementById("page-data").textContent);

  // Small DOM and number helpers
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of kids.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }
  function s(tag, attrs, parent) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) e.setAttribute(k, v);
    }
    if (parent) parent.appendChild(e);
    return e;
  }
  function stext(parent, x, y, str, attrs) {
    const t = s("text", Object.assign({ x: x, y: y }, attrs || {}), parent);
    t.textContent = str;
    return t;
  }
  const isNum = (x) => typeof x === "number" && isFinite(x);
  function fmt(x, d) {
    if (!isNum(x)) return "—";
    const a = Math.abs(x);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return x.toExponential(2);
    return x.toFixed(d === undefined ? 3 : d);
  }
  const fmtSigned = (x) => (isNum(x) && x >= 0 ? "+" : "") + fmt(x);
  function fmtTick(v) {
    const a = Math.abs(v);
    if (v === 0) return "0";
    if (a >= 1e6) return String(parseFloat((v / 1e6).toPrecision(3))) + "M";
    if (a >= 1e4) return String(parseFloat((v / 1e3).toPrecision(3))) + "k";
    if (a < 1e-2) return v.toExponential(0);
    return String(parseFloat(v.toPrecision(3)));
  }
  const intFmt = (x) => (isNum(x) ? Math.round(x).toLocaleString("en-US") : "—");

  // Circuit model
  // Rows of one layer, bottom to top (the order the residual stream is read).
  const ROWS = [
    ["attn.act_in", "attn read", "act_in"],
    ["attn.qkv", "q · k · v", "by head"],
    ["attn.resid_delta", "attn write", "resid_delta"],
    ["mlp.act_in", "mlp read", "act_in"],
    ["mlp.post_act", "mlp neurons", "post_act"],
    ["mlp.resid_delta", "mlp write", "resid_delta"],
  ];
  const RESID_ROWS = new Set(["attn.act_in", "attn.resid_delta", "mlp.act_in", "mlp.resid_delta"]);
  const LETTER = { resid_read: "r", resid_write: "w", q: "q", k: "k", v: "v", mlp_neuron: "n" };
  const KIND_NAME = {
    resid_read: "residual read", resid_write: "residual write", q: "query",
    k: "key", v: "value", mlp_neuron: "MLP neuron",
  };
  function subSite(n) {
    const m = /^\d+\.(.+)$/.exec(n.site || "");
    return m ? m[1] : String(n.site || "?");
  }
  function rowOf(n) {
    const sub = subSite(n);
    return /^attn\.[qkv]$/.test(sub) ? "attn.qkv" : sub;
  }

  function layoutCircuit(c) {
    const nodes = c.nodes || [];
    const cfg = (c.model && c.model.config) || {};
    let nLayer = isNum(cfg.n_layer) ? cfg.n_layer : 0;
    for (const n of nodes) nLayer = Math.max(nLayer, (n.layer || 0) + 1);
    const groups = new Map();
    for (const n of nodes) {
      const key = (n.layer || 0) + "|" + rowOf(n);
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(n);
    }
    const residIdx = [...new Set(nodes.filter((n) => RESID_ROWS.has(rowOf(n))).map((n) => n.index))]
      .sort((a, b) => a - b);
    const residRank = new Map(residIdx.map((v, i) => [v, i]));

    // Rows bottom to top; each item has a slot position (in units of SP).
    const rows = [];
    // Residual channels share one x per index across rows, so writes and the
    // reads they feed line up; many channels get a tighter spacing.
    const SP = 62, RS = residIdx.length > 14 ? 0.55 : 1;
    let maxSlots = residIdx.length * RS;
    for (let L = 0; L < nLayer; L++) {
      const known = ROWS.map((r) => r[0]);
      const extra = [...groups.keys()].filter((k) => k.startsWith(L + "|"))
        .map((k) => k.slice(k.indexOf("|") + 1)).filter((r) => !known.includes(r)).sort();
      let any = false;
      for (const key of known.concat(extra)) {
        const ns = (groups.get(L + "|" + key) || []).slice();
        if (!ns.length) continue;
        any = true;
        const meta = ROWS.find((r) => r[0] === key) || [key, key, ""];
        const row = { layer: L, key: key, label: meta[1], sub: meta[2], items: [], heads: [] };
        if (RESID_ROWS.has(key)) {
          ns.sort((a, b) => a.index - b.index);
          for (const n of ns) row.items.push({ n: n, slot: RS * (residRank.get(n.index) - (residIdx.length - 1) / 2) });
        } else {
          const order = { q: 0, k: 1, v: 2 };
          ns.sort((a, b) => ((a.head || 0) - (b.head || 0)) ||
            ((order[a.kind] || 0) - (order[b.kind] || 0)) || (a.index - b.index));
          let p = 0, prevHead = null, start = 0;
          const spans = [];
          for (const n of ns) {
            const head = key === "attn.qkv" ? (n.head === null || n.head === undefined ? "?" : n.head) : null;
            if (prevHead !== null && head !== prevHead) {
              spans.push({ head: prevHead, a: start, b: p - 1 });
              p += 0.6;
              start = p;
            }
            row.items.push({ n: n, slot: p });
            prevHead = head;
            p += 1;
          }
          if (key === "attn.qkv") spans.push({ head: prevHead, a: start, b: p - 1 });
          const shift = (p - 1) / 2;
          for (const it of row.items) it.slot -= shift;
          row.heads = spans.map((sp) => ({ head: sp.head, a: sp.a - shift, b: sp.b - shift }));
          maxSlots = Math.max(maxSlots, p);
        }
        rows.push(row);
      }
      if (!any) rows.push({ layer: L, key: null, label: "no nodes", sub: "", items: [], heads: [] });
    }

    const LABEL_W = 170, PAD = 36, ROW_H = 48, BAND = 34, GAP = 10;
    const W = Math.max(820, LABEL_W + 2 * PAD + maxSlots * SP);
    const cx = LABEL_W + (W - LABEL_W) / 2;
    let y = BAND + GAP;
    const layers = [];
    for (let L = nLayer - 1; L >= 0; L--) {
      const lr = rows.filter((r) => r.layer === L).reverse();
      const top = y;
      for (const r of lr) {
        r.y = y + ROW_H / 2;
        y += r.key ? ROW_H : ROW_H / 2;
      }
      layers.push({ layer: L, top: top, bottom: y });
      y += GAP;
    }
    const H = y + BAND;
    const pos = new Map();
    for (const r of rows) for (const it of r.items) pos.set(it.n.id, { x: cx + it.slot * SP, y: r.y });
    return { rows, layers, pos, W, H, cx, SP, RS, LABEL_W, BAND, residIdx };
  }

  // Token heatmaps
  function heat(v) {
    const a = Math.min(1, Math.abs(v)) * 0.85;
    return v >= 0 ? `rgba(234, 88, 12, ${a.toFixed(3)})` : `rgba(79, 70, 229, ${a.toFixed(3)})`;
  }
  function showTok(t) {
    const str = String(t).replace(/\n/g, "⏎").replace(/\t/g, "⇥");
    return str.length ? str : "∅";
  }
  function tokenStrip(tokens, acts, norm, markLast) {
    const div = h("div", { class: "tokens" });
    (tokens || []).forEach((t, i) => {
      const a = acts && isNum(acts[i]) ? acts[i] : null;
      const last = markLast && i === tokens.length - 1;
      const sp = h("span", {
        class: "tok" + (last ? " last" : ""),
        title: a === null ? String(t) : `${JSON.stringify(t)}  act ${fmt(a)}`,
      }, showTok(t));
      if (a !== null && norm > 0) {
        sp.style.background = heat(a / norm);
        if (Math.abs(a / norm) > 0.6) sp.style.color = "#fff";
      }
      div.append(sp);
    });
    return div;
  }
  const maxAbsOf = (arrs) => arrs.reduce((m, arr) =>
    (arr || []).reduce((mm, v) => (isNum(v) ? Math.max(mm, Math.abs(v)) : mm), m), 0);

  // Charts
  function niceTicks(a, b, n) {
    const span = b - a;
    if (!(span > 0)) return [a];
    let step = Math.pow(10, Math.floor(Math.log10(span / n)));
    const err = span / n / step;
    if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
    const out = [];
    for (let v = Math.ceil(a / step) * step; v <= b + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    return out;
  }
  function logTicks(a, b) { // a, b in log10 space; returns data values
    const out = [];
    for (let e = Math.floor(a); e <= Math.ceil(b); e++) {
      for (const m of [1, 2, 5]) {
        const v = m * Math.pow(10, e), lv = Math.log10(v);
        if (lv >= a - 1e-9 && lv <= b + 1e-9) out.push(v);
      }
    }
    return out.length > 8 ? out.filter((v) => Math.abs(Math.log10(v) % 1) < 1e-9) : out;
  }
  function extent(vs) {
    return vs.reduce((m, v) => [Math.min(m[0], v), Math.max(m[1], v)], [Infinity, -Infinity]);
  }

  // o: {title, xlabel, series: [{name, color, pts: [[x, y]], marker, dash}],
  //     hlines: [{y, label, color}], vlines: [{x, label, color}], logx}
  function lineChart(parent, o) {
    const W = 460, H = 260, M = { l: 54, r: 18, t: 14, b: 40 };
    const fig = h("figure", { class: "chart", id: o.id || null });
    fig.append(h("figcaption", {}, o.title));
    parent.append(fig);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": o.title });
    fig.append(svg);
    const series = o.series.map((sr) => Object.assign({}, sr, {
      pts: sr.pts.filter((p) => isNum(p[0]) && isNum(p[1]) && (!o.logx || p[0] > 0)).sort((p, q) => p[0] - q[0]),
    })).filter((sr) => sr.pts.length);
    if (!series.length) {
      stext(svg, W / 2, H / 2, "no data", { class: "chart-empty", "text-anchor": "middle" });
      return fig;
    }
    const tx = o.logx ? Math.log10 : (v) => v;
    const pts = series.flatMap((sr) => sr.pts);
    let [x0, x1] = extent(pts.map((p) => tx(p[0])));
    let [y0, y1] = extent(pts.map((p) => p[1]).concat((o.hlines || []).map((l) => l.y).filter(isNum)));
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
    const yp = (y1 - y0) * 0.06;
    y0 = y0 >= 0 && y0 - yp < 0 ? 0 : y0 - yp;
    y1 += yp;
    const X = (v) => M.l + (tx(v) - x0) / (x1 - x0) * (W - M.l - M.r);
    const Y = (v) => H - M.b - (v - y0) / (y1 - y0) * (H - M.t - M.b);
    const grid = s("g", { class: "grid" }, svg);
    for (const v of o.logx ? logTicks(x0, x1) : niceTicks(x0, x1, 5)) {
      s("line", { x1: X(v), x2: X(v), y1: M.t, y2: H - M.b }, grid);
      stext(grid, X(v), H - M.b + 15, fmtTick(v), { "text-anchor": "middle" });
    }
    for (const v of niceTicks(y0, y1, 5)) {
      s("line", { x1: M.l, x2: W - M.r, y1: Y(v), y2: Y(v) }, grid);
      stext(grid, M.l - 6, Y(v) + 4, fmtTick(v), { "text-anchor": "end" });
    }
    s("rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, class: "frame" }, svg);
    stext(svg, (M.l + W - M.r) / 2, H - 6, o.xlabel || "", { class: "axis-label", "text-anchor": "middle" });
    for (const l of o.hlines || []) {
      if (!isNum(l.y)) continue;
      s("line", { x1: M.l, x2: W - M.r, y1: Y(l.y), y2: Y(l.y), class: "refline", stroke: l.color }, svg);
      stext(svg, W - M.r - 4, Y(l.y) - 5, l.label, { class: "ref-label", "text-anchor": "end", fill: l.color });
    }
    for (const l of o.vlines || []) {
      if (!isNum(l.x) || (o.logx && l.x <= 0)) continue;
      s("line", { x1: X(l.x), x2: X(l.x), y1: M.t, y2: H - M.b, class: "refline", stroke: l.color }, svg);
      stext(svg, X(l.x) + 4, M.t + 12, l.label, { class: "ref-label", fill: l.color });
    }
    const legend = h("div", { class: "legend" });
    for (const sr of series) {
      const d = sr.pts.map((p, i) => (i ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1)).join("");
      if (!sr.noline) s("path", { d: d, class: "series", stroke: sr.color, "stroke-dasharray": sr.dash || null }, svg);
      if (sr.marker || sr.noline || sr.pts.length <= 30) {
        for (const p of sr.pts) {
          const c = s("circle", { cx: X(p[0]), cy: Y(p[1]), r: sr.r || 3, fill: sr.fill || sr.color,
            class: "marker" + (sr.noline ? " point" : "") + (sr.fill === "none" ? " ring" : "") }, svg);
          s("title", {}, c).textContent = p[2] || `${sr.name}: ${fmtTick(p[0])} → ${fmt(p[1], 4)}`;
        }
      }
      legend.append(h("span", { class: "key" }, h("i", { style: `background:${sr.color}` }), sr.name));
    }
    fig.append(legend);
    return fig;
  }

  function trainingCharts(parent, rows) {
    const ser = (key) => rows.filter((r) => isNum(r.step) && isNum(r[key])).map((r) => [r.step, r[key]]);
    lineChart(parent, {
      id: "chart-loss", title: "Training loss", xlabel: "step",
      series: [{ name: "loss", color: "#2563eb", pts: ser("loss") },
        { name: "eval_loss", color: "#ea580c", pts: ser("eval_loss"), marker: true }],
    });
    lineChart(parent, { id: "chart-l0", title: "L0 (nonzero weights)", xlabel: "step",
      series: [{ name: "l0_total", color: "#7c3aed", pts: ser("l0_total") }] });
    lineChart(parent, { id: "chart-lr", title: "Learning rate", xlabel: "step",
      series: [{ name: "lr", color: "#0d9488", pts: ser("lr") }] });
  }

  function download(name, text, mime) {
    const url = URL.createObjectURL(new Blob([text], { type: mime }));
    const a = h("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  // The circuit page
  function renderCircuitPage(c) {
    const app = document.getElementById("app");
    app.replaceChildren();
    const task = c.task || {}, model = c.model || {}, cfg = model.config || {};
    const losses = c.losses || {}, counts = c.counts || {};
    const nodes = c.nodes || [], edges = c.edges || [];
    const byId = new Map(nodes.map((n) => [n.id, n]));
    const target = isNum(losses.target) ? losses.target : task.target_loss;
    const name = task.name || "circuit";

    // Header, losses and counts.
    const meta = [
      isNum(model.step) ? `model step ${intFmt(model.step)}` : null,
      ["n_layer", "d_model", "n_head", "d_head", "d_mlp"].filter((k) => isNum(cfg[k])).map((k) => `${k} ${cfg[k]}`).join(" · "),
      model.workdir ? `workdir ${model.workdir}` : null,
    ].filter(Boolean).join("  ·  ");
    app.append(h("header", { class: "top" },
      h("div", { class: "title-row" },
        h("h1", { id: "task-name" }, name),
        DATA.index_href ? h("a", { class: "back", href: DATA.index_href }, "← run report") : null),
      task.description ? h("p", { class: "desc" }, task.description) : null,
      h("p", { class: "muted" }, meta)));

    const flags = c.flags || [];
    if (flags.length) {
      app.append(h("div", { class: "card flags", id: "flags" }, h("h2", {}, "Flagged"),
        h("ul", {}, flags.map((f) => h("li", {}, f)))));
    }
    const cards = h("div", { class: "cards", id: "losses" });
    const card = (label, value, cls, note, id) => cards.append(h("div", { class: "stat " + (cls || ""), id: id || null },
      h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, value), note ? h("div", { class: "stat-note" }, note) : null));
    const vs = (x) => (isNum(x) && isNum(target) ? (x <= target ? "good" : "bad") : "");
    const cal = c.calibration || null, reached = c.reached || {};
    card("Full model", fmt(losses.full_model), "", "task loss, test pairs");
    card("Circuit", fmt(losses.circuit), vs(losses.circuit),
      cal ? `rest mean-ablated; calibrated (scale ${fmt(cal.scale)}, shift ${fmt(cal.shift)}, fitted on train)` : "rest mean-ablated", "card-circuit");
    if (isNum(losses.circuit_uncalibrated)) card("Circuit, uncalibrated", fmt(losses.circuit_uncalibrated), vs(losses.circuit_uncalibrated), "raw logits, test pairs", "card-uncalibrated");
    card("Circuit ablated", fmt(losses.circuit_ablated), "", "circuit mean-ablated");
    card("Random-init control", fmt(losses.random_init_control), "", "same shape, untrained");
    card("Target", fmt(target), "target", "reached" in reached || "test_calibrated" in reached ?
      `reached: ${reached.test_calibrated ? "yes" : "no"} calibrated, ${reached.test_uncalibrated ? "yes" : "no"} uncalibrated` : "sufficiency threshold", "card-target");
    const total = counts.total_nodes;
    card("Nodes", intFmt(nodes.length), "", isNum(total) ? `of ${intFmt(total)} (${(100 * nodes.length / total).toPrecision(2)}%)` : null);
    const nWeight = isNum(counts.edges) && isNum(counts.residual_edges) ? counts.edges : edges.filter((e) => e.kind !== "residual").length;
    const nResid = isNum(counts.residual_edges) ? counts.residual_edges : edges.filter((e) => e.kind === "residual").length;
    card("Edges", intFmt(nWeight), "", "nonzero weights between kept nodes (with embedding and unembedding)", "card-edges");
    card("Residual edges", intFmt(nResid), "", "write → later read of a channel: not weights", "card-residual");
    app.append(cards);

    // Controls.
    const maxAbs = Math.max(0, ...edges.map((e) => Math.abs(e.weight) || 0));
    const slider = h("input", { type: "range", id: "edge-threshold", min: 0, max: maxAbs || 1,
      step: (maxAbs || 1) / 200, value: 0, "aria-label": "edge weight threshold" });
    const thrVal = h("output", { id: "threshold-value" }, "0");
    const nodeCount = h("span", { id: "node-count" }), edgeCount = h("span", { id: "edge-count" });
    const weightCount = h("span", { id: "weight-edge-count" }), residCount = h("span", { id: "residual-edge-count" });
    const ex = DATA.exports || {};
    const fileBase = name.replace(/[^\w.-]+/g, "_");
    const exportBtn = (id, label, file, text, mime) => h("button", { id: id, type: "button",
      onclick: () => download(file, text || "", mime) }, label);
    app.append(h("div", { class: "controls card" },
      h("label", { for: "edge-threshold" }, "|weight| ≥ "), slider, thrVal,
      h("span", { class: "counts" }, "nodes ", nodeCount, " · edges ", edgeCount,
        " (weights ", weightCount, ", residual ", residCount, ")"),
      h("span", { class: "legend inline" },
        h("span", { class: "key" }, h("i", { class: "pos" }), "positive weight"),
        h("span", { class: "key" }, h("i", { class: "neg" }), "negative weight"),
        h("span", { class: "key" }, h("i", { class: "res" }), "residual connection (not a weight)")),
      h("span", { class: "exports" }, "export ",
        exportBtn("export-json", "JSON", fileBase + "_graph.json", ex.json, "application/json"),
        exportBtn("export-csv", "CSV", fileBase + "_edges.csv", ex.csv, "text/csv"),
        exportBtn("export-dot", "DOT", fileBase + "_graph.dot", ex.dot, "text/vnd.graphviz"))));

    // Graph and panel.
    const lay = layoutCircuit(c);
    const ioNodes = c.io_nodes || [];
    for (const kind of ["embed", "logit"]) { // token nodes in the bands
      const row = ioNodes.filter((n) => n.kind === kind);
      const step = Math.min(110, (lay.W - lay.LABEL_W - 40) / Math.max(row.length, 1));
      row.forEach((n, i) => lay.pos.set(n.id, {
        x: lay.cx + (i - (row.length - 1) / 2) * step,
        y: kind === "embed" ? lay.H - lay.BAND / 2 : lay.BAND / 2, io: true }));
    }
    const graphCard = h("div", { class: "card graph-card" });
    const panel = h("aside", { id: "node-panel", class: "card panel" });
    app.append(h("div", { class: "main" }, graphCard, panel));
    const svg = s("svg", { viewBox: `0 0 ${lay.W} ${lay.H}`, class: "circuit", id: "circuit",
      "aria-label": `circuit for ${name}`,
      style: `width:100%; max-width:${lay.W}px; min-width:${Math.round(0.7 * lay.W)}px` });
    graphCard.append(svg);
    const bg = s("g", { class: "bg" }, svg);
    s("rect", { x: 0, y: 0, width: lay.W, height: lay.BAND, class: "band io" }, bg);
    stext(bg, 12, lay.BAND / 2 + 5, "unembedding (logits)", { class: "band-label" });
    s("rect", { x: 0, y: lay.H - lay.BAND, width: lay.W, height: lay.BAND, class: "band io" }, bg);
    stext(bg, 12, lay.H - lay.BAND / 2 + 5, "embedding (tokens + positions)", { class: "band-label" });
    for (const L of lay.layers) {
      s("rect", { x: 0, y: L.top, width: lay.W, height: L.bottom - L.top, class: "band layer" + (L.layer % 2 ? " odd" : ""), rx: 6 }, bg);
      stext(bg, 16, (L.top + L.bottom) / 2, `layer ${L.layer}`, { class: "layer-label", transform: `rotate(-90 16 ${(L.top + L.bottom) / 2})`, "text-anchor": "middle", dy: 10 });
    }
    for (const r of lay.rows) {
      if (!r.key) { stext(bg, 44, r.y - 8, "(no nodes in this layer)", { class: "row-label muted" }); continue; }
      stext(bg, 44, r.y - 2, r.label, { class: "row-label" });
      stext(bg, 44, r.y + 12, `${r.layer}.${r.key === "attn.qkv" ? "attn.q/k/v" : r.key}`, { class: "row-sub" });
      for (const hd of r.heads) {
        const x0 = lay.cx + hd.a * lay.SP - 24, x1 = lay.cx + hd.b * lay.SP + 24;
        s("rect", { x: x0, y: r.y - 22, width: x1 - x0, height: 46, rx: 12, class: "head-box" }, bg);
        stext(bg, x0 - 5, r.y + 4, `h${hd.head}`, { class: "head-label", "text-anchor": "end" });
      }
    }
    lay.residIdx.forEach((idx, i) => { // one faint line per residual channel in the circuit
      const x = lay.cx + lay.RS * (i - (lay.residIdx.length - 1) / 2) * lay.SP;
      s("line", { x1: x, x2: x, y1: lay.BAND, y2: lay.H - lay.BAND, class: "resid-line" }, bg);
    });

    const gEdges = s("g", { class: "edges" }, svg), gNodes = s("g", { class: "nodes" }, svg);
    const edgeEls = [], adj = new Map(nodes.concat(ioNodes).map((n) => [n.id, []]));
    let missing = 0;
    for (const e of edges) {
      const a = lay.pos.get(e.source), b = lay.pos.get(e.target);
      if (!a || !b) { missing++; continue; }
      const w = isNum(e.weight) ? e.weight : 0;
      const d = Math.abs(a.y - b.y) < 1
        ? `M${a.x} ${a.y} Q${(a.x + b.x) / 2} ${a.y - 46} ${b.x} ${b.y}`
        : `M${a.x} ${a.y} C${a.x} ${(a.y + b.y) / 2} ${b.x} ${(a.y + b.y) / 2} ${b.x} ${b.y}`;
      const el = s("path", { d: d, class: `edge ${w >= 0 ? "pos" : "neg"}${e.kind === "residual" ? " residual" : ""}`, "data-kind": e.kind || "weight",
        "data-source": e.source, "data-target": e.target, "data-weight": w,
        "stroke-width": (1.2 + 5 * Math.abs(w) / (maxAbs || 1)).toFixed(2) }, gEdges);
      s("title", {}, el).textContent = `${e.source} → ${e.target}\nweight ${fmt(w, 4)}${e.kind ? " (" + e.kind + ")" : ""}`;
      edgeEls.push({ e: e, w: w, el: el });
      adj.get(e.source).push({ other: e.target, w: w, dir: "out" });
      adj.get(e.target).push({ other: e.source, w: w, dir: "in" });
    }
    if (missing) graphCard.append(h("p", { class: "warn" }, `${missing} edge(s) name nodes missing from the node list; not drawn.`));

    const nodeEls = new Map();
    let pinned = null;
    for (const n of nodes) {
      const p = lay.pos.get(n.id);
      const g = s("g", { class: `node kind-${n.kind}`, "data-node-id": n.id, transform: `translate(${p.x} ${p.y})`, tabindex: 0 }, gNodes);
      s("circle", { r: 11 }, g);
      stext(g, 0, 4, LETTER[n.kind] || "•", { class: "node-letter", "text-anchor": "middle" });
      stext(g, 0, 24, String(n.index), { class: "node-index", "text-anchor": "middle" });
      s("title", {}, g).textContent = `${n.id}\nmean ${fmt(n.mean)} · tau ${fmt(n.tau)} · Δloss ${fmtSigned(n.ablation_delta)}`;
      g.addEventListener("mouseenter", () => focus(n.id));
      g.addEventListener("mouseleave", () => focus(pinned));
      g.addEventListener("click", (ev) => { ev.stopPropagation(); pinned = n.id; focus(n.id); });
      g.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { pinned = n.id; focus(n.id); } });
      nodeEls.set(n.id, g);
    }
    for (const n of ioNodes) {
      const p = lay.pos.get(n.id);
      const g = s("g", { class: `io-node io-${n.kind}`, "data-node-id": n.id, transform: `translate(${p.x} ${p.y})` }, gNodes);
      const label = showTok(n.token ?? n.token_id);
      s("rect", { x: -Math.max(18, 4 * label.length + 8), y: -11, width: 2 * Math.max(18, 4 * label.length + 8), height: 22, rx: 6 }, g);
      stext(g, 0, 4, label, { class: "io-label", "text-anchor": "middle" });
      s("title", {}, g).textContent = `${n.kind === "embed" ? "input token" : "logit of"} ${JSON.stringify(n.token)} (id ${n.token_id})`;
    }
    const nSeeds = ((c.stability || {}).nodes || []).length;
    if (nSeeds > 1) { // ring: how many stability seeds kept the node
      for (const n of nodes) {
        const g = nodeEls.get(n.id);
        if (!g || !isNum(n.seeds_kept)) continue;
        g.classList.add("seeds-" + (n.seeds_kept >= nSeeds ? "all" : n.seeds_kept <= 1 ? "one" : "some"));
        g.setAttribute("data-seeds-kept", n.seeds_kept);
        const ring = s("circle", { r: 15, class: "seed-ring" }, null);
        g.insertBefore(ring, g.firstChild);
      }
    }
    svg.addEventListener("click", () => { pinned = null; focus(null); });

    function focus(id) {
      svg.classList.toggle("focused", !!id);
      const near = new Set(id ? [id, ...(adj.get(id) || []).map((x) => x.other)] : []);
      for (const [nid, g] of nodeEls) {
        g.classList.toggle("hl", near.has(nid));
        g.classList.toggle("selected", nid === pinned);
      }
      for (const x of edgeEls) x.el.classList.toggle("hl", !!id && (x.e.source === id || x.e.target === id));
      renderPanel(id ? byId.get(id) : null);
    }

    function applyThreshold() {
      const t = parseFloat(slider.value) || 0;
      thrVal.textContent = fmt(t);
      const live = new Set();
      let shown = 0, wShown = 0, rShown = 0;
      for (const x of edgeEls) {
        const vis = Math.abs(x.w) >= t;
        x.el.style.display = vis ? "" : "none";
        if (vis) {
          shown++; live.add(x.e.source); live.add(x.e.target);
          if (x.e.kind === "residual") rShown++; else wShown++;
        }
      }
      let nShown = 0;
      for (const [nid, g] of nodeEls) {
        const vis = t <= 0 || live.has(nid);
        g.classList.toggle("faded", !vis);
        if (vis) nShown++;
      }
      nodeCount.textContent = `${nShown} / ${nodes.length}`;
      edgeCount.textContent = `${shown} / ${edgeEls.length}`;
      const nR = edgeEls.filter((x) => x.e.kind === "residual").length;
      weightCount.textContent = `${wShown} / ${edgeEls.length - nR}`;
      residCount.textContent = `${rShown} / ${nR}`;
    }
    slider.addEventListener("input", applyThreshold);
    applyThreshold();

    function renderPanel(n) {
      panel.replaceChildren();
      if (!n) {
        panel.append(h("div", { class: "panel-empty" },
          h("p", {}, "Hover or click a node to see its activations."),
          h("p", { class: "muted" }, "Rows run from the embedding (bottom) to the unembedding (top). " +
            "Edges: blue positive, red negative, width |weight|; solid edges are weights (counted), " +
            "dashed ones carry a residual channel from a write to a later read (a connection, not a weight). " +
            "Token boxes: input tokens that tell a pair apart (bottom), candidate logits (top)." +
            (nSeeds > 1 ? ` Rings: green = every one of ${nSeeds} seeds kept the node, amber = some, grey = this seed only.` : ""))));
        return;
      }
      const fields = [["site", n.site], ["index", n.index], ["layer", n.layer], ["kind", KIND_NAME[n.kind] || n.kind]];
      if (n.head !== null && n.head !== undefined) fields.push(["head", n.head]);
      fields.push(["mean", fmt(n.mean, 4)], ["tau", fmt(n.tau, 4)]);
      if (isNum(n.seeds_kept) && nSeeds > 1) fields.push(["kept by", `${n.seeds_kept} of ${nSeeds} seeds`]);
      const ad = n.ablation_delta;
      panel.append(
        h("div", { class: "panel-head" }, h("span", { class: `swatch kind-${n.kind}` }, LETTER[n.kind] || ""),
          h("h2", {}, n.site, h("span", { class: "panel-index" }, " #" + n.index))),
        h("dl", { class: "fields" }, fields.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
        h("div", { class: "ablation " + (isNum(ad) ? (ad > 0 ? "up" : "down") : "") },
          h("span", {}, "Task loss change when ablated alone"), h("b", {}, fmtSigned(ad))));

      const links = adj.get(n.id) || [];
      if (links.length) {
        const list = h("ul", { class: "links" });
        for (const l of links.slice().sort((a, b) => Math.abs(b.w) - Math.abs(a.w))) {
          list.append(h("li", {}, h("span", { class: "dir" }, l.dir === "in" ? "from" : "to"),
            h("a", { href: "#", onclick: (ev) => { ev.preventDefault(); pinned = l.other; focus(l.other); } }, l.other),
            h("span", { class: l.w >= 0 ? "w pos" : "w neg" }, fmtSigned(l.w))));
        }
        panel.append(h("h3", {}, `Edges (${links.length})`), list);
      }

      const examples = task.examples || [], eacts = n.example_acts || [];
      panel.append(h("h3", {}, "Task examples"));
      if (!examples.length) panel.append(h("p", { class: "muted" }, "No task examples recorded."));
      else {
        if (!eacts.length) panel.append(h("p", { class: "muted" }, "No activations recorded for this node."));
        const norm = maxAbsOf(eacts.flatMap((x) => [x.acts, x.pair_acts]));
        examples.forEach((exm, i) => {
          const a = eacts[i] || {};
          const side = (label, toks, acts, tgt, alt) => h("div", { class: "side" },
            h("div", { class: "side-label" }, label),
            tokenStrip(toks, acts, norm, true),
            h("div", { class: "answer" }, "→ ", h("code", { class: "good" }, showTok(tgt ?? "?")), " vs ", h("code", {}, showTok(alt ?? "?"))));
          panel.append(h("div", { class: "pair" },
            side("A", exm.prompt_tokens, a.acts, exm.target, exm.alternative),
            side("B", exm.pair_prompt_tokens, a.pair_acts, exm.pair_target, exm.pair_alternative)));
        });
        if (norm > 0) panel.append(h("p", { class: "scale" }, h("span", { class: "grad" }), `activation, ±${fmt(norm)} full colour`));
      }

      const snips = n.top_snippets || [];
      panel.append(h("h3", {}, "Top activations on held-out text"));
      if (!snips.length) panel.append(h("p", { class: "muted" }, "No snippets recorded."));
      const snorm = maxAbsOf(snips.map((x) => x.acts));
      for (const sn of snips) {
        panel.append(h("div", { class: "snippet" }, tokenStrip(sn.tokens, sn.acts, snorm, false),
          h("span", { class: "snip-max" }, fmt(maxAbsOf([sn.acts]), 2))));
      }
    }
    renderPanel(null);

    // Plots.
    const plots = h("div", { class: "plots" });
    app.append(h("section", { class: "card" }, h("h2", {}, "Pruning and training"), plots));
    const lk = (c.loss_vs_k || []).filter((p) => isNum(p.k) && isNum(p.loss));
    const ks = lk.map((p) => p.k);
    lineChart(plots, {
      id: "chart-loss-vs-k", title: "Task loss vs circuit size k", xlabel: "k (nodes kept)",
      logx: ks.length > 1 && Math.min(...ks) > 0 && Math.max(...ks) / Math.min(...ks) > 20,
      series: [{ name: "circuit loss", color: "#2563eb", pts: lk.map((p) => [p.k, p.loss]), marker: true }],
      hlines: [{ y: target, label: "target", color: "#dc2626" }, { y: losses.full_model, label: "full model", color: "#64748b" }],
      vlines: [{ x: nodes.length, label: `k = ${nodes.length}`, color: "#16a34a" }],
    });
    if ((DATA.metrics || []).length) trainingCharts(plots, DATA.metrics);
    renderSearch(app, c, target);
  }

  // The sweep, stability across seeds and the nonsense control.
  function renderSearch(app, c, target) {
    const sweep = c.sweep || [], st = c.stability, ns = c.nonsense_control;
    if (!sweep.length && !st && !ns) return;
    const sec = h("section", { class: "card", id: "search" }, h("h2", {}, "Search and controls"));
    app.append(sec);
    const plots = h("div", { class: "plots" });
    sec.append(plots);
    if (sweep.length) {
      const pt = (r, i) => [r.nodes, r.test_loss, `setting ${i}: ${r.nodes} nodes, test loss ${fmt(r.test_loss, 4)} ` +
        `(train ${fmt(r.train_loss, 4)}); k_coef ${fmt(r.setting.k_coef)}, lr ${fmt(r.setting.lr)}, ` +
        `T ${fmt(r.setting.temperature)}, init ${fmt(r.setting.init_mean)}, seed ${r.setting.seed}`];
      const live = (i) => !sweep[i].diverged;
      const ok = sweep.map(pt).filter((p, i) => live(i) && sweep[i].reached_test && sweep[i].exact !== false);
      const bound = sweep.map(pt).filter((p, i) => live(i) && sweep[i].reached_test && sweep[i].exact === false);
      const miss = sweep.map(pt).filter((p, i) => live(i) && !sweep[i].reached_test);
      const sel = isNum(c.selected_index) && sweep[c.selected_index] ? [pt(sweep[c.selected_index], c.selected_index)] : [];
      const nodesX = sweep.map((r) => r.nodes).filter((x) => isNum(x) && x > 0);
      lineChart(plots, {
        id: "chart-sweep", title: `Sweep: ${sweep.length} settings, nodes vs test loss`, xlabel: "nodes in the circuit",
        logx: nodesX.length > 1 && Math.max(...nodesX) / Math.min(...nodesX) > 20,
        series: [{ name: "reached target (smallest k)", color: "#16a34a", pts: ok, noline: true },
          { name: "reached (k an upper bound: stopped once beaten)", color: "#86efac", pts: bound, noline: true },
          { name: "missed target", color: "#94a3b8", pts: miss, noline: true },
          { name: "selected", color: "#111827", fill: "none", r: 7, pts: sel, noline: true }],
        hlines: [{ y: target, label: "target", color: "#dc2626" }],
      });
      const div = sweep.filter((r) => r.diverged).length;
      const rows = sweep.map((r, i) => h("tr", { class: i === c.selected_index ? "selected" : "" },
        [i, fmt(r.setting.k_coef), fmt(r.setting.lr), fmt(r.setting.temperature), fmt(r.setting.init_mean), r.setting.seed,
          r.diverged ? "diverged" : fmt(r.final_task_loss, 4), intFmt(r.final_nodes),
          (r.exact === false ? "≤ " : "") + intFmt(r.nodes), fmt(r.train_loss, 4), fmt(r.test_loss, 4),
          r.reached_test ? "yes" : r.reached_train ? "train only" : "no"].map((v) => h("td", {}, String(v)))));
      sec.append(h("details", { id: "sweep-table" }, h("summary", {}, `Every setting (${div} diverged)`),
        h("table", { class: "data" }, h("thead", {}, h("tr", {}, ["#", "k_coef", "lr", "T", "init", "seed", "final loss",
          "trained nodes", "circuit nodes", "train loss", "test loss", "reached"].map((x) => h("th", {}, x)))), h("tbody", {}, rows))));
    }
    if (st) {
      const jac = st.jaccard || [];
      sec.append(h("div", { class: "control", id: "stability" }, h("h3", {}, "Stability across seeds"),
        h("p", {}, `Seeds ${(st.seeds || []).join(", ")} of the selected setting keep ${(st.nodes || []).join(", ")} nodes; ` +
          `mean Jaccard overlap ${fmt(st.mean_jaccard, 2)}; ${st.n_in_every_seed} nodes in every seed, ${st.n_in_any_seed} in any.`),
        h("table", { class: "data jaccard" }, h("tbody", {}, jac.map((row) => h("tr", {}, row.map((v) => h("td", {}, fmt(v, 2)))))))));
    }
    if (ns) {
      const b = ns.best || {};
      sec.append(h("div", { class: "control" + (ns.flag ? " flagged" : ""), id: "nonsense" }, h("h3", {}, "Nonsense-task control"),
        h("p", {}, `The same prompts, answers drawn by a coin per pair, pruned the same way (seeds ${(ns.seeds || []).join(", ")}): ` +
          (b.reached_train ? `the smallest circuit reaching the target on its train pairs keeps ${intFmt(b.nodes)} nodes`
            : `no seed reaches the target (circuits of ${(ns.nodes || []).join(", ")} nodes)`) +
          `; train loss ${fmt(b.train_loss, 4)}, test loss ${fmt(b.test_loss, 4)}, against the real circuit's ` +
          `${intFmt((c.nodes || []).length)} nodes and test loss ${fmt((c.losses || {}).circuit, 4)}. At the real circuit's size the ` +
          `nonsense train loss is ${(ns.train_loss_at_circuit_size || []).map((x) => fmt(x, 3)).join(", ")}.`),
        h("p", { class: ns.flag ? "warn" : "muted" }, (ns.flag ? "Flag: " : "") + (ns.reason || ""))));
    }
  }

  function renderIndexPage() {
    const el = document.getElementById("training-plots");
    if (!el) return;
    el.classList.add("plots");
    if ((DATA.metrics || []).length) trainingCharts(el, DATA.metrics);
    else el.append(h("p", { class: "muted" }, "No metrics.jsonl."));
  }

  if (DATA.page === "circuit") renderCircuitPage(DATA.circuit || {});
  else renderIndexPage();
  document.body.dataset.ready = "1";
})();

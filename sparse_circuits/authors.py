"""The authors' released circuits and task samples (`viz_data.pt`) as ours.

The authors published, beside their models, the circuits their (unreleased)
pruning found: `viz/<model>/<task>/<sweep>/<k>/viz_data.pt`. This module
reads such a file into this project's circuit document (circuit.json,
docs/circuit_json.md "Imported circuits"), and its `task_samples` into a
binary task; `--mode=import_circuit` does both for a workdir holding the
imported model (`--mode=import`), adds the weight edges between the kept
nodes as for our circuits, compares the circuit with ours and writes its
page. docs/authors_models.md is the walk-through.

What the file holds (see the notes in docs/authors_models.md): the kept
channel ids per site (`circuit_data`, every site including empty ones and
`final_resid`; csp_yolo2's `act_in` sites carry 32 position-embedding
channels after d_model, kept as nodes with `position_channel` set), the
losses, the edges between kept nodes inside a block with their signed
ablation deltas (`importances.pair_data`: not weights, kept as `delta`),
and the prompts of the task (`importances.task_samples`).

Loss convention: the file stores `loss`, `interv_loss` and each node's
`ch_interv_losses` as sums over the two prompts of a pair; the authors'
viewer halves them, and so do we (the document keeps the stored values
too, labelled). `all_loss`, `layer_interv_losses` and the edge deltas are
kept as stored (their viewer never halves the first; the others are not
known to be halved).

Every file is loaded with `torch.load(weights_only=True)` (no pickled code
runs), and one that does not fit the schema is refused with an
InteropError naming the key.
"""

import json
import os
import re
from typing import Mapping, Sequence

import numpy as np

from sparse_circuits import checkpoints
from sparse_circuits import interop
from sparse_circuits import layout
from sparse_circuits import reporting
from sparse_circuits import runs
from sparse_circuits import sites as sites_lib
from sparse_circuits import viz
from sparse_circuits.circuits import document as document_lib
from sparse_circuits.circuits import overlap as overlap_lib
from sparse_circuits.errors import InteropError
from sparse_circuits.tasks import binary as tasks_lib

_log = reporting.get(__name__)

VIZ_FILE = "viz_data.pt"
PAD_ID = 0  # their task samples are right-padded with token 0
# Stated in every document and task built from task samples.
PAD_RULE = (
    "a row's prompt ends at its last token that is not 0 and is read there; "
    "the 0s after it are padding. Token 0 is a real token ('!' in "
    "tinypython_2k), so a prompt that really ends in a bare '!' is read one "
    "token early, as the authors' own example reads it (give lengths to "
    "override)")
LOSS_NOTE = (
    "full_model, circuit and each node's ablated_loss are the stored values "
    "halved: the file stores sums over the two prompts of a pair, which the "
    "authors' viewer halves; stored_losses, all_loss, layer_interv_losses "
    "and the edge deltas are as stored")
# The authors' path: viz/<model>/<task>/<sweep>/<k>/viz_data.pt.
_TASK_SUFFIX = re.compile(r"_beeg\d*$")


# ------------------------------------------------------------- reading


def _plain(x):
  """torch tensors -> numpy, recursively (containers keep their types)."""
  if hasattr(x, "detach") and hasattr(x, "numpy"):
    t = x.detach().cpu()
    if t.is_floating_point():
      t = t.float()
    return t.numpy()
  if isinstance(x, Mapping):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return type(x)(_plain(v) for v in x)
  return x


def load_viz_data(path: str) -> dict:
  """viz_data.pt -> a dict of numpy arrays and plain values, loaded with
  weights_only=True. Raises InteropError if it does not load or is not a
  dict (only the top level is checked here; `circuit_document` and
  `task_from_samples` check what they read)."""
  torch = interop.require_torch()
  if not os.path.isfile(path):
    raise InteropError(f"{path}: no such file (want a {VIZ_FILE})")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle errors come in many types
    raise InteropError(f"{path} does not load with torch.load(weights_only="
                       f"True): {str(e).splitlines()[0]}") from None
  if not isinstance(obj, Mapping):
    raise InteropError(f"{path} holds a {type(obj).__name__}, not the dict "
                       f"of a {VIZ_FILE}")
  return _plain(dict(obj))


class _Reader:
  """Typed access to a viz_data dict; every refusal names its key."""

  def __init__(self, path: str):
    self.path = path

  def fail(self, key: str, why: str):
    raise InteropError(f"{self.path}: key {key}: {why}")

  def get(self, d, key: str, name: str, required: bool = True):
    if not isinstance(d, Mapping):
      self.fail(name.rpartition(".")[0] or name, "is not a dict")
    if key not in d:
      if required:
        self.fail(name, "is missing")
      return None
    return d[key]

  def dict(self, v, name: str) -> Mapping:
    if not isinstance(v, Mapping):
      self.fail(name, f"is a {type(v).__name__}, want a dict")
    return v

  def number(self, v, name: str) -> float:
    a = np.asarray(v) if not isinstance(v, (str, bytes, Mapping)) else None
    if a is None or a.shape != () or not np.issubdtype(a.dtype, np.number):
      self.fail(name, f"is {type(v).__name__} {str(v)[:40]!r}, want a number")
    return float(a)

  def ints(self, v, name: str) -> np.ndarray:
    a = np.asarray(v) if isinstance(v, (np.ndarray, list, tuple)) else None
    if a is None or a.ndim != 1 or not (
        a.size == 0 or np.issubdtype(a.dtype, np.integer)):
      self.fail(name, "want a 1-D integer tensor of channel ids")
    if a.size and a.min() < 0:
      self.fail(name, "holds a negative channel id")
    return a.astype(np.int64)

  def ids(self, v, name: str) -> list:
    """Edge end ids: integers, possibly a final "bias"."""
    items = v.tolist() if isinstance(v, np.ndarray) else v
    if not isinstance(items, (list, tuple)) or any(
        not (isinstance(i, (int, np.integer)) and not isinstance(i, bool))
        and i != "bias" for i in items):
      self.fail(name, 'want a list of channel ids (integers or "bias")')
    return [i if i == "bias" else int(i) for i in items]


def _dims(imp: Mapping, cfg) -> dict | None:
  """The model's shape from the file's beeg_model_config, else `cfg`."""
  beeg = imp.get("beeg_model_config")
  if isinstance(beeg, Mapping):
    b = interop.normalize_beeg(beeg)
    return {k: b[k] for k in ("n_layer", "d_model", "n_head", "d_head",
                              "d_mlp", "d_pos_emb", "block_size",
                              "vocab_size")}
  if cfg is not None:
    return {"n_layer": cfg.n_layer, "d_model": cfg.d_model,
            "n_head": cfg.n_head, "d_head": cfg.d_head, "d_mlp": cfg.d_mlp,
            "d_pos_emb": None, "block_size": cfg.block_size,
            "vocab_size": cfg.vocab_size}
  return None


def _site_width(dims, sub: str) -> int | None:
  """How many channels a node site has (act_in: + the position channels)."""
  if dims is None:
    return None
  hd = dims["n_head"] * dims["d_head"]
  return {"attn.act_in": dims["d_model"] + (dims["d_pos_emb"] or 0),
          "mlp.act_in": dims["d_model"] + (dims["d_pos_emb"] or 0),
          "attn.q": hd, "attn.k": hd, "attn.v": hd,
          "attn.resid_delta": dims["d_model"],
          "mlp.post_act": dims["d_mlp"], "mlp.resid_delta": dims["d_model"],
          sites_lib.FINAL_SITE: dims["d_model"]}[sub]


def path_parts(path: str) -> dict:
  """What the authors' directory layout says: model, task, sweep, k (None
  where the path does not have that shape)."""
  parts = os.path.abspath(path).split(os.sep)
  if len(parts) >= 6 and parts[-6] == "viz":
    model, task, sweep, k = parts[-5:-1]
    return {"model": model, "task_dir": task, "sweep": sweep, "k": k,
            "task": _TASK_SUFFIX.sub("", task)}
  return {"model": None, "task_dir": None, "sweep": None, "k": None,
          "task": None}


def _nodes(r: _Reader, circuit_data, ch_losses, dims, interv_half):
  nodes = []
  for site, raw in circuit_data.items():
    name = f"circuit_data[{site!r}]"
    layer, sub = sites_lib.split(str(site))
    if site == sites_lib.FINAL_SITE:
      kind = "final_resid"
      layer = dims["n_layer"] if dims else None
    elif layer is None or sub not in sites_lib.NODE_KINDS:
      r.fail(name, "is not a node site (want '{L}.attn.act_in|q|k|v|"
             "resid_delta', '{L}.mlp.act_in|post_act|resid_delta' or "
             "'final_resid')")
    else:
      kind = sites_lib.NODE_KINDS[sub]
    ids = r.ints(raw, name)
    lname = f"importances.ch_interv_losses[{site!r}]"
    losses = ch_losses.get(site)
    if losses is None and ids.size:
      r.fail(lname, "is missing (one loss per kept node of the site)")
    losses = np.asarray(losses if losses is not None else [], np.float64)
    if losses.shape != ids.shape:
      r.fail(lname, f"has {losses.size} losses for {ids.size} nodes in "
             f"{name}")
    width = _site_width(dims, sub)
    if width is not None and ids.size and ids.max() >= width:
      r.fail(name, f"holds channel {int(ids.max())} but the site has "
             f"{width} channels")
    if dims is not None and layer is not None and kind != "final_resid" and (
        layer >= dims["n_layer"]):
      r.fail(name, f"names layer {layer} of a {dims['n_layer']}-layer model")
    for i, loss in zip(ids.tolist(), losses.tolist()):
      pos = None
      if sub.endswith("act_in") and dims and i >= dims["d_model"]:
        pos = i - dims["d_model"]
      ablated = loss / 2
      nodes.append({
          "id": sites_lib.node_id(site, i), "site": site, "layer": layer,
          "kind": kind, "index": i,
          "head": (i // dims["d_head"] if dims and kind in ("q", "k", "v")
                   else None),
          "tau": None, "mean": None, "seeds_kept": None,
          "ablated_loss": ablated,
          "ablation_delta": (ablated - interv_half
                             if interv_half is not None else None),
          "position_channel": pos})
  top = max((n["layer"] for n in nodes if n["layer"] is not None),
            default=-1)
  for n in nodes:  # final_resid of a model whose depth the file omits
    if n["layer"] is None:
      n["layer"] = top + 1
  return nodes


def _delta_edges(r: _Reader, pair_data) -> list[dict]:
  if not isinstance(pair_data, (list, tuple)):
    r.fail("importances.pair_data", "want a list of [W, src_ids, tgt_ids, "
           "(src_site, tgt_site)]")
  out = []
  for n, entry in enumerate(pair_data):
    name = f"importances.pair_data[{n}]"
    if not isinstance(entry, (list, tuple)) or len(entry) != 4:
      r.fail(name, "want [W, src_ids, tgt_ids, (src_site, tgt_site)]")
    w, src, tgt, ends = entry
    if (not isinstance(ends, (list, tuple)) or len(ends) != 2
        or not all(isinstance(s, str) for s in ends)):
      r.fail(f"{name}[3]", "want (src_site, tgt_site), two site names")
    src = r.ids(src, f"{name}[1]")
    tgt = r.ids(tgt, f"{name}[2]")
    w = np.asarray(w) if isinstance(w, np.ndarray) else None
    if w is None or w.shape != (len(src), len(tgt)):
      r.fail(f"{name}[0]", f"want a [{len(src)}, {len(tgt)}] tensor "
             f"(src_ids x tgt_ids), got "
             f"{None if w is None else tuple(w.shape)}")
    for i, j in np.argwhere(w != 0):
      out.append({"source": sites_lib.node_id(ends[0], src[i]) if src[i] !=
                  "bias" else f"{ends[0]}:bias",
                  "target": sites_lib.node_id(ends[1], tgt[j]),
                  "delta": float(w[i, j]), "kind": "ablation_delta"})
  return out


def circuit_document(viz_data: Mapping, *, path: str, cfg=None,
                     task_name: str | None = None) -> dict:
  """A viz_data dict (`load_viz_data`) -> our circuit document.

  Nodes come from `circuit_data` (ids per site, ascending), with each
  node's halved `ablated_loss` and its `ablation_delta` (that minus the
  circuit's halved loss; our nodes' field of that name is the same change).
  Their within-block edges with their ablation deltas go to
  `imported.edges` (kind "ablation_delta", field `delta`: not weights);
  `edges` (the weights between kept nodes) stays empty until
  `add_weight_edges` adds them from the model. `cfg` (our ModelConfig of
  the imported model) checks the ids when the file has no
  beeg_model_config.
  """
  r = _Reader(path)
  viz_data = _plain(viz_data)  # torch tensors, if not loaded by us
  circuit_data = r.dict(r.get(viz_data, "circuit_data", "circuit_data"),
                        "circuit_data")
  imp = r.dict(r.get(viz_data, "importances", "importances"), "importances")
  loss = r.number(r.get(imp, "loss", "importances.loss"), "importances.loss")
  interv = r.number(r.get(imp, "interv_loss", "importances.interv_loss"),
                    "importances.interv_loss")
  ch = r.dict(r.get(imp, "ch_interv_losses", "importances.ch_interv_losses"),
              "importances.ch_interv_losses")
  pair_data = r.get(imp, "pair_data", "importances.pair_data")
  dims = _dims(imp, cfg)
  if dims is not None and cfg is not None:
    ours = _dims({}, cfg)
    bad = [f"{k} {dims[k]} vs {ours[k]}" for k in overlap_lib.SHAPE_FIELDS
           if dims[k] != ours[k]]
    if bad:
      r.fail("importances.beeg_model_config", "describes another model than "
             f"the workdir's ({', '.join(bad)})")
  nodes = _nodes(r, circuit_data, ch, dims, interv / 2)
  delta_edges = _delta_edges(r, pair_data)

  prune_config = r.get(viz_data, "prune_config", "prune_config", False)
  if prune_config is not None:
    prune_config = dict(r.dict(prune_config, "prune_config"))
  all_loss = r.get(viz_data, "all_loss", "all_loss", False)
  if all_loss is not None:
    if not isinstance(all_loss, (list, tuple)) or any(
        not isinstance(p, (list, tuple)) or len(p) != 2 for p in all_loss):
      r.fail("all_loss", "want a list of (step, loss) pairs")
    all_loss = [[int(x), r.number(y, f"all_loss[{i}]")]
                for i, (x, y) in enumerate(all_loss)]
  layer_losses = r.get(imp, "layer_interv_losses",
                       "importances.layer_interv_losses", False)
  if layer_losses is not None:
    layer_losses = {str(k): r.number(v, f"importances.layer_interv_losses"
                                     f"[{k!r}]")
                    for k, v in r.dict(layer_losses,
                                       "importances.layer_interv_losses"
                                       ).items()}
  total = r.get(viz_data, "num_total_nodes", "num_total_nodes", False)
  if total is not None:
    total = int(r.number(total, "num_total_nodes"))
  parts = path_parts(path)
  name = task_name or parts["task"] or "authors_circuit"
  has_samples = "task_samples" in imp
  return {
      "schema_version": document_lib.SCHEMA_VERSION,
      "task": {"name": name,
               "description": f"the authors' circuit from {path}",
               "target_loss": None,
               "n_train": None, "n_test": None, "examples": []},
      "model": {"workdir": None, "step": None,
                "name": parts["model"], "config": dims},
      "prune_config": prune_config,
      "target_reached": None,
      "nodes": nodes,
      "io_nodes": [],
      "edges": [],
      "counts": {"nodes": len(nodes), "edges": None, "residual_edges": None,
                 "edges_by_kind": {}, "total_nodes": total,
                 "ablation_delta_edges": len(delta_edges)},
      "losses": {"full_model": loss / 2, "circuit": interv / 2,
                 "target": None},
      "imported": {
          "format": VIZ_FILE, "path": os.path.abspath(path), **parts,
          "loss_convention": LOSS_NOTE,
          "stored_losses": {"loss": loss, "interv_loss": interv},
          "layer_interv_losses": layer_losses,
          "all_loss": all_loss,
          "edges": delta_edges,
          "has_task_samples": has_samples,
          "not_read": sorted(set(viz_data) - {
              "circuit_data", "importances", "prune_config", "all_loss",
              "num_total_nodes"}) + sorted(
                  f"importances.{k}" for k in set(imp) - {
                      "loss", "interv_loss", "ch_interv_losses",
                      "pair_data", "layer_interv_losses",
                      "beeg_model_config", "task_samples"}),
      },
      "flags": [],
  }


def kept_masks(doc: dict, cfg) -> dict[str, np.ndarray]:
  """{site: bool [width]} of a document's nodes that are nodes of our model
  (`final_resid` and position channels are not)."""
  return sites_lib.node_masks(
      doc["nodes"], {s.name: s.width for s in sites_lib.node_sites(cfg)})


def add_weight_edges(doc: dict, params, cfg, task=None, tok=None) -> dict:
  """Fills `edges`, `io_nodes` and `counts` as for our circuits: the nonzero
  weights of the model between the kept nodes (and, with a task, from its
  input tokens and to its candidates) and the connectable pairs, so that
  sizes and densities compare."""
  io = document_lib.io_tokens(task, tok.eot_id) if task is not None else None
  edges, stats = document_lib.edges_and_counts(
      params, cfg, kept_masks(doc, cfg), io)
  doc["edges"] = edges
  doc["io_nodes"] = document_lib.io_nodes(edges, tok)
  doc["counts"].update(stats)
  if doc["counts"].get("total_nodes") is None:
    doc["counts"]["total_nodes"] = sites_lib.NodeIndex(
        sites_lib.node_sites(cfg)).n
  return doc


# ------------------------------------------------------------- task samples


def _quote(text: str):
  q = max(text.rfind('"'), text.rfind("'"))
  return None if q < 0 else (text[q], "'" if text[q] == '"' else '"')


def _brackets(text: str):
  return {2: ("]]\n", "]\n"), 1: ("]\n", "]]\n")}.get(
      text.count("[") - text.count("]"))


def _while_return(text: str):
  s = text.rstrip(" ")
  if s.endswith("while True"):
    return ":", "\n"
  if s.endswith("return True"):
    return "\n", ":"
  return None


# task -> (the row's (target, alternative) from its prompt text, the rule).
# The file stores no targets; these follow from what each task asks.
KNOWN_RULES = {
    "single_double_quote": (_quote, "the closing quote is the last quote "
                            "character of the prompt (the one that opened "
                            "the string); the other quote is the "
                            "alternative"),
    "bracket_counting": (_brackets, "']]\\n' when two '[' are open, ']\\n' "
                         "when one is; the other is the alternative"),
    "while_return_true": (_while_return, "':' after 'while True', '\\n' "
                          "after 'return True' (unconfirmed)"),
}


def known_rule(task: str | None):
  """(function, description) of the candidate rule for a task name (with
  or without the authors' `_beeg` suffix), or None."""
  return KNOWN_RULES.get(_TASK_SUFFIX.sub("", task or ""))


def task_from_samples(viz_data: Mapping, tok, *, path: str, name: str,
                      candidates: Sequence[str] | None = None,
                      lengths: Sequence[int] | None = None,
                      key: str = "task_samples", max_len: int | None = None):
  """`importances.task_samples` (or `task_samples_circuit`) as a Task.

  Row i pairs with row i + N/2. Each prompt is read at its true last
  position (PAD_RULE, or `lengths`: each row's prompt length). The two
  candidates: `candidates` = (target, alternative) of rows 0..N/2-1, the
  other half swapped; else the task's rule in KNOWN_RULES. The file holds
  N/2 pairs only, so the train and the test split both hold all of them
  (evaluate with it; a circuit pruned on it is fitted to what it scores).
  """
  r = _Reader(path)
  imp = r.dict(r.get(_plain(viz_data), "importances", "importances"),
               "importances")
  kname = f"importances.{key}"
  samples = r.get(imp, key, kname)
  if not isinstance(samples, (list, tuple)) or len(samples) != 2:
    r.fail(kname, "want (tokens [N, T], {site: {channel: acts}})")
  tokens = samples[0]
  if (not isinstance(tokens, np.ndarray) or tokens.ndim != 2
      or not np.issubdtype(tokens.dtype, np.integer)):
    r.fail(f"{kname}[0]", "want an integer token tensor [N, T]")
  r.dict(samples[1], f"{kname}[1]")
  n = len(tokens)
  if n < 2 or n % 2:
    r.fail(f"{kname}[0]", f"has {n} rows; row i pairs with row i + N/2, so "
           "N must be even and positive")
  if tokens.min() < 0 or tokens.max() >= tok.vocab_size:
    r.fail(f"{kname}[0]", f"holds token ids outside the tokenizer's "
           f"0..{tok.vocab_size - 1}")
  if lengths is not None:
    last = np.asarray(lengths, np.int64) - 1
    if last.shape != (n,) or last.min() < 0 or last.max() >= tokens.shape[1]:
      raise InteropError(f"{path}: lengths: want {n} prompt lengths in "
                         f"1..{tokens.shape[1]}")
  else:
    try:
      last = tasks_lib.last_positions(tokens, PAD_ID)
    except ValueError as e:
      r.fail(f"{kname}[0]", str(e))
  if max_len is not None:
    if last.max() >= max_len:
      r.fail(f"{kname}[0]", f"a prompt has {int(last.max()) + 1} tokens, "
             f"more than the model's context {max_len}")
    tokens = tokens[:, :max_len]  # what is cut is padding
  half = n // 2
  order = np.array([j for i in range(half) for j in (i, i + half)])
  texts = [tok.decode(tokens[i, :last[i] + 1]) for i in range(n)]
  if candidates is not None:
    if len(candidates) != 2 or not all(isinstance(c, str) and c
                                       for c in candidates):
      raise InteropError(f"{path}: candidates: want two non-empty strings "
                         "(target, alternative) of rows 0..N/2-1")
    t, a = candidates
    cands = [(t, a) if i < half else (a, t) for i in range(n)]
    rule = (f"given: {t!r} vs {a!r} for rows 0..{half - 1}, swapped for "
            f"rows {half}..{n - 1}")
  else:
    known = known_rule(name)
    if known is None:
      raise InteropError(
          f"{path}: the file stores no targets and task {name!r} has no "
          f"known rule ({sorted(KNOWN_RULES)}): give candidates (target, "
          "alternative) of rows 0..N/2-1 (--config.interop.candidates)")
    fn, rule = known
    cands = []
    for i, text in enumerate(texts):
      c = fn(text)
      if c is None:
        r.fail(f"{kname}[0]", f"row {i}: the {name} rule finds no "
               f"candidates in the prompt ending {text[-40:]!r}; give "
               "candidates")
      cands.append(c)
  unswapped = [i for i in range(half)
               if cands[i] != cands[i + half][::-1]]
  if unswapped:
    _log.warning("%s: %d pairs (rows i, i+%d) do not swap candidates, e.g. "
                 "row %d: %s", path, len(unswapped), half, unswapped[0],
                 cands[unswapped[0]])
  data = tasks_lib.from_token_rows(
      tok, name, tokens[order], last[order],
      [cands[i][0] for i in order], [cands[i][1] for i in order],
      np.arange(n) // 2, texts=[texts[i] for i in order],
      where=lambda j: f" ({kname} row {order[j]})")
  task = tasks_lib.Task(
      name, f"the authors' task samples ({key}, {half} pairs) from {path}; "
      f"prompts: {PAD_RULE}; candidates: {rule}", data, data)
  return task


def user_task_rows(task, tok) -> tuple[list[dict], int]:
  """The task as rows of a user task file (config.tasks.user_tasks), and
  how many prompts do not tokenize back to their tokens (read from the file,
  those rows give the model other tokens than the authors' samples)."""
  data, rows, drift = task.test, [], 0
  for i in range(len(data)):
    prompt = data.texts[i]
    if tok.encode(prompt) != data.prompt(i).tolist():
      drift += 1
    rows.append({"task": task.name, "prompt": prompt,
                 "target": tok.decode([int(data.target[i])]),
                 "alternative": tok.decode([int(data.alternative[i])])})
  return rows, drift


# ------------------------------------------------------------- the mode


def _read_circuit(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise InteropError(f"interop.compare: cannot read {path}: {e}") from None


def _compare_path(ic, where: layout.Layout, task: str) -> str | None:
  """interop.compare (a circuit.json, or a task pruned in this workdir),
  else this workdir's circuit of the same task if there is one."""
  want = str(ic.get("compare", "") or "")
  if want:
    path = want if want.endswith(".json") else where.circuit(want)
    if not os.path.isfile(path):
      raise InteropError(f"interop.compare={want!r}: {path} is missing")
    return path
  path = where.circuit(task)
  return path if os.path.isfile(path) else None


def _safe(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(type(x))


def import_circuit_run(config, workdir: str) -> str:
  """`--mode=import_circuit`: interop.viz_data -> WORKDIR/circuits/<name>/
  (circuit.json, index.html, graph exports; task_samples.jsonl).

  With a checkpoint in WORKDIR (the imported model, --mode=import), the
  document gets the model's weight edges between its kept nodes, and the
  task samples (candidates: interop.candidates or the task's known rule)
  are evaluated on the model, and the circuit alone (everything else
  mean-ablated to the means --mode=prune wrote, if it ran). The circuit is
  compared node by node with interop.compare, or WORKDIR's own circuit of
  the same task if there is one. <name>: interop.circuit_name, else
  "authors_<task dir>". Returns the path of circuit.json.
  """
  ic = config.interop
  path = str(ic.get("viz_data", "") or "")
  if not path:
    raise InteropError("--mode=import_circuit needs --config.interop."
                       f"viz_data=PATH (a {VIZ_FILE})")
  path = os.path.abspath(os.path.expanduser(path))
  viz_data = load_viz_data(path)
  parts = path_parts(path)
  task_name = str(ic.get("task_name", "") or "") or parts["task"] or (
      "authors_circuit")
  name = str(ic.get("circuit_name", "") or "") or (
      f"authors_{parts['task_dir'] or task_name}")
  where = layout.Layout(workdir)
  run = (runs.load(workdir, overlay=config)
         if checkpoints.latest_step(workdir) is not None else None)
  doc = circuit_document(viz_data, path=path, task_name=task_name,
                         cfg=run.cfg if run else None)
  out_dir = where.circuit_dir(name)
  task = None
  candidates = tuple(ic.get("candidates", ()) or ()) or None
  if run is not None:
    doc["model"].update(workdir=os.path.abspath(workdir), step=run.step)
    tok = run.tokenizer
    if doc["imported"]["has_task_samples"] and (
        candidates or known_rule(task_name)):
      task = task_from_samples(viz_data, tok, path=path, name=task_name,
                               candidates=candidates,
                               max_len=run.cfg.block_size)
      ev = run.evaluate(task)
      doc["task"].update(description=task.description,
                         n_train=len(task.train), n_test=len(task.test),
                         examples=document_lib.examples(task, tok))
      doc["task_samples_eval"] = {"full_model": ev, "pad_rule": PAD_RULE}
      means_path = where.means(run.step)
      if os.path.isfile(means_path):  # written by --mode=prune
        circ = runs.Circuit(doc, dict(np.load(means_path)), run)
        doc["task_samples_eval"].update(
            circuit=run.evaluate(task, circ.apply()), means=means_path)
      rows, drift = user_task_rows(task, tok)
      reporting.write_text(os.path.join(out_dir, "task_samples.jsonl"),
                           "".join(json.dumps(r) + "\n" for r in rows))
      if drift:
        _log.warning("%s: %d of %d prompts do not tokenize back to the "
                     "file's tokens; as a user task they differ", name,
                     drift, len(rows))
    elif doc["imported"]["has_task_samples"]:
      _log.warning("%s: task samples not evaluated: task %r has no known "
                   "candidate rule; give --config.interop.candidates",
                   name, task_name)
    add_weight_edges(doc, run.params, run.cfg, task, tok)
  other = _compare_path(ic, where, task_name)
  if other is not None:
    doc["overlap"] = overlap_lib.overlap(doc, _read_circuit(other))
    doc["overlap"]["b"]["path"] = other
  out = reporting.write_json(where.circuit(name), doc, default=_safe)
  viz.write_circuit_page(doc, os.path.join(out_dir, "index.html"))
  viz.write_exports(doc, out_dir)
  ov = doc.get("overlap")
  _log.info(
      f"imported {path}: {doc['counts']['nodes']} nodes, "
      f"{doc['counts']['ablation_delta_edges']} ablation-delta edges, "
      f"{doc['counts']['edges'] if run else 'no'} weight edges"
      f"{'' if run else ' (no model in ' + workdir + ')'}; loss "
      f"{doc['losses']['full_model']:.4g} full, {doc['losses']['circuit']:.4g}"
      f" circuit (halved)"
      + (f"; Jaccard {ov['jaccard']} with {other}" if ov else "")
      + f" -> {out}")
  return out

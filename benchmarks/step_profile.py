"""Where a train step's time goes: `python -m benchmarks.step --profile=N`.

Runs the compiled step N times under `jax.profiler.trace`, reads the trace
back in-process (`jax.profiler.ProfileData`, no TensorBoard needed) and sums
the time of each executed XLA operation (on CPU, one event per thunk, named
by its HLO instruction). Each instruction is labelled from the named scopes
in its HLO metadata (`abs_topk[site]`, `bigram_table`, `weight_projection`,
`optimizer`, set in the library) and its opcode (dot = matmul). Host overhead
is the wall time per step minus the time some thread was running one of the
step's operations.
"""

import collections
import glob
import re
import tempfile
import time

import jax

# An HLO instruction: `%name = type opcode(...), ... metadata={op_name="..."`.
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) .*?([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_COMP = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")
_SITE = re.compile(r"abs_topk\[([^\]]+)\]")
_CONTROL = {"while", "conditional", "call"}  # their bodies' ops are timed


def _instructions(hlo_text: str) -> dict:
  """{instruction name: (opcode, result type, [op_name of it and of what
  it fuses])}."""
  comps, out, cur = collections.defaultdict(list), {}, None
  for line in hlo_text.splitlines():
    m = _COMP.match(line)
    if m and line.rstrip().endswith("{"):
      cur = m.group(1)
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, typ, opcode = m.groups()
    op = _OP_NAME.search(line)
    calls = _CALLS.search(line)
    out[name] = (opcode, typ, op.group(1) if op else "",
                 calls.group(1) if calls else None)
    comps[cur].append(name)
  labels = {}
  for name, (opcode, typ, op, calls) in out.items():
    ops = [op]
    if opcode == "fusion" and calls:
      ops += [out[i][2] for i in comps.get(calls, ())]
      if any(out[i][0] in ("dot", "convolution") for i in comps.get(calls, ())):
        opcode = "dot"
    labels[name] = (opcode, typ, ops)
  return labels


def _dims(typ: str) -> list[int]:
  m = re.match(r"\w+\[([\d,]*)\]", typ)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def label(opcode: str, typ: str, op_names: list[str], vocab: int) -> str:
  """The profile row an HLO instruction's time goes to."""
  joined = " ".join(op_names)
  bwd = "transpose(" in joined
  dims = _dims(typ)
  if "weight_projection" in joined:
    return "weight projection (top-k of the matrices)"
  site = _SITE.search(joined)
  if site:
    return f"AbsTopK {site.group(1)} {'bwd' if bwd else 'fwd'}"
  if "optimizer" in joined:
    return ("Adam etc., bigram table" if dims == [vocab, vocab]
            else "Adam etc., other parameters")
  if "bigram_table" in joined or dims == [vocab, vocab]:
    return f"bigram table {'gradient' if bwd else 'lookup'}"
  if opcode in ("dot", "convolution", "custom-call"):
    return f"matmuls {'bwd' if bwd else 'fwd'}"
  if vocab in dims:
    return f"logits-sized ops (loss, softmax) {'bwd' if bwd else 'fwd'}"
  return f"other ops {'bwd' if bwd else 'fwd'}"


def _events(xspace_file: str, module: str):
  """Per thread, the (hlo_op, start_ns, end_ns) of the module's executed
  operations (thunks; a loop's encloses its body's)."""
  pd = jax.profiler.ProfileData.from_file(xspace_file)
  lines = []
  for plane in pd.planes:
    for line in plane.lines:
      ev = []
      for e in line.events:
        stats = dict(e.stats)
        if stats.get("hlo_module") == module and "hlo_op" in stats:
          ev.append((stats["hlo_op"], e.start_ns, e.start_ns + e.duration_ns))
      if ev:
        lines.append(sorted(ev, key=lambda t: (t[1], -t[2])))
  return lines


def _self_times(events):
  """(hlo_op, self ns) of one thread's events, nested ones subtracted from
  the one enclosing them (a while's self time is its loop control)."""
  out, stack = [], []  # stack of [op, end, self]
  for op, s, e in events:
    while stack and stack[-1][1] <= s:
      out.append(tuple(stack.pop()[::2]))
    if stack:
      stack[-1][2] -= e - s
    stack.append([op, e, e - s])
  out += [tuple(x[::2]) for x in stack]
  return out


def _busy_ns(intervals) -> float:
  """Length of the union of (start, end) intervals."""
  total, end = 0.0, -float("inf")
  for s, e in sorted(intervals):
    if e > end:
      total += e - max(s, end)
      end = e
  return total


def profile(compiled, run, n: int, vocab: int) -> dict:
  """{row: ms per step} of `run(n)` (which runs the compiled step n times
  and blocks), plus "wall" (traced), "untraced wall" and "host overhead"
  (untraced wall - time some thread ran an operation under the trace)."""
  text = compiled.as_text()
  labels = _instructions(text)
  module = text.split("HloModule ", 1)[1].split(",")[0].split()[0]
  run(1)
  start = time.perf_counter()
  run(n)
  plain_ns = (time.perf_counter() - start) * 1e9
  with tempfile.TemporaryDirectory() as d:
    start = time.perf_counter()
    with jax.profiler.trace(d):
      run(n)
    wall_ns = (time.perf_counter() - start) * 1e9
    (f,) = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)
    lines = _events(f, module)
  rows = collections.Counter()
  for events in lines:
    for op, ns in _self_times(events):
      opcode, typ, names = labels.get(op, ("?", "", [op]))
      rows[label(opcode, typ, names, vocab)] += ns
  out = {k: v / n / 1e6 for k, v in rows.most_common()}
  out["wall"] = wall_ns / n / 1e6
  out["untraced wall"] = plain_ns / n / 1e6
  busy = _busy_ns([(s, e) for ev in lines for _, s, e in ev])
  out["host overhead"] = max(0.0, plain_ns - busy) / n / 1e6
  return out


def format_profile(prof: dict, n: int) -> str:
  extra = ("wall", "untraced wall", "host overhead")
  ops = {k: v for k, v in prof.items() if k not in extra}
  total = sum(ops.values())
  rows = [f"profile of {n} steps (jax.profiler trace, per XLA operation): "
          f"{prof['untraced wall']:.1f} ms/step untraced, {prof['wall']:.1f} "
          f"traced, {total:.1f} ms/step in operations (summed over threads)",
          f"  {'':<44}{'ms/step':>9}{'% of ops':>10}"]
  groups = collections.defaultdict(float)
  for k, v in ops.items():
    rows.append(f"  {k:<44}{v:>9.2f}{100 * v / total:>9.1f}%")
    groups[k.split(" ")[0]] += v
  over = prof["host overhead"]
  rows.append(f"  {'host overhead (untraced wall - busy)':<44}{over:>9.2f}"
              f"{100 * over / prof['untraced wall']:>9.1f}% of untraced wall")
  rows.append("  by kind: " + ", ".join(
      f"{k} {100 * v / total:.1f}%" for k, v in
      sorted(groups.items(), key=lambda kv: -kv[1])))
  return "\n".join(rows)

"""Weight sparsity as an optax transformation (method.md §2).

`sparsify(plan)` is the last link of the optimizer chain: it takes the update,
forms the new parameters, keeps in each sparsified matrix exactly its k
largest magnitudes (after protecting the top `min_per_neuron` of every neuron
or channel) and returns the update that lands there. Its step counter lives in
the optimizer state, so it is sharded and checkpointed with everything else,
and "parameters are sparse after every step" cannot be forgotten.

Top-k method, chosen by measurement (see `topk_mask`): a 4-ary search on
the float bit pattern with a tie-break, which takes a traced k (k changes
every step while pfrac anneals, and `lax.top_k` needs a static one), keeps
exactly k with ties going to the lower flat index, and is built from global
reductions, hence correct on a matrix sharded across devices. The model's
AbsTopK uses the same `topk_mask` on its activation rows.
"""

import dataclasses
import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sparse_circuits.errors import ConfigError

# (parameter path regex, kind, axis reduced to find each neuron's top entries
# or None). kind "hidden" keeps pfrac/ef**2, "embed" keeps pfrac/ef.
# c_fc/c_attn kernels are [in, out]: a neuron's or q/k/v channel's inputs are
# a column (reduce axis 0); c_proj kernels are [in, out] too: an MLP neuron's
# or attention output channel's outputs are a row (reduce axis 1).
MATRIX_RULES = (
    (r"h_\d+/attn/c_attn/kernel$", "hidden", 0),
    (r"h_\d+/attn/c_proj/kernel$", "hidden", 1),
    (r"h_\d+/mlp/c_fc/kernel$", "hidden", 0),
    (r"h_\d+/mlp/c_proj/kernel$", "hidden", 1),
    (r"wpe/embedding$", "hidden", None),
    (r"wte/embedding$", "embed", None),
    (r"lm_head/kernel$", "embed", None),
)


def path_str(path) -> str:
  """A parameter's tree path as "h_0/attn/c_attn/kernel" (the rules' form)."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """pfrac goes linearly from dense (ef**2) to the target between
  anneal_start and anneal_end (fractions of training), then holds."""
  num_steps: int
  pfrac: float
  expansion_factor: float
  anneal_start: float = 0.01
  anneal_end: float = 0.5

  @property
  def dense_pfrac(self):
    return self.expansion_factor ** 2

  @property
  def end_step(self) -> int:
    return int(self.anneal_end * self.num_steps)

  def pfrac_at(self, step):
    t0 = self.anneal_start * self.num_steps
    t1 = max(self.anneal_end * self.num_steps, t0 + 1)
    frac = jnp.clip((jnp.asarray(step, jnp.float32) - t0) / (t1 - t0), 0, 1)
    return self.dense_pfrac + (self.pfrac - self.dense_pfrac) * frac

  def keep_fraction(self, kind: str, pfrac):
    div = self.expansion_factor ** (2 if kind == "hidden" else 1)
    return jnp.minimum(1.0, pfrac / div)


@dataclasses.dataclass(frozen=True)
class MatrixPlan:
  path: str
  shape: tuple[int, ...]
  kind: str
  protect_axis: int | None
  k_final: int


@dataclasses.dataclass(frozen=True)
class Plan:
  matrices: tuple[MatrixPlan, ...]
  schedule: Schedule
  min_per_neuron: int = 4

  def by_path(self) -> dict[str, MatrixPlan]:
    return {m.path: m for m in self.matrices}

  def k_at(self, m: MatrixPlan, step):
    """The scheduled k of matrix m at `step` (traceable)."""
    size = math.prod(m.shape)
    frac = self.schedule.keep_fraction(m.kind, self.schedule.pfrac_at(step))
    k = jnp.floor(frac * size).astype(jnp.int32)
    k = jnp.where(step >= self.schedule.end_step, m.k_final, k)
    return jnp.clip(k, m.k_final, size)


def make_plan(abstract_params, schedule: Schedule,
              min_per_neuron: int = 4) -> Plan:
  """Which matrices are sparsified and their final k; raises ValueError
  (naming the matrix and the config field) when 4 per neuron cannot fit."""
  mats = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    p = path_str(path)
    for pattern, kind, axis in MATRIX_RULES:
      if re.search(pattern, p):
        size = math.prod(leaf.shape)
        frac = float(schedule.keep_fraction(kind, schedule.pfrac))
        k = max(1, int(math.floor(frac * size)))
        if axis is not None:
          n_vec = leaf.shape[1 - axis]
          if min_per_neuron * n_vec > k:
            raise ConfigError(
                f"sparsity.pfrac={schedule.pfrac} keeps k={k} of {p} "
                f"{tuple(leaf.shape)}, fewer than sparsity.min_per_neuron="
                f"{min_per_neuron} x {n_vec} neurons/channels; raise "
                "sparsity.pfrac or lower sparsity.expansion_factor")
        mats.append(MatrixPlan(p, tuple(leaf.shape), kind, axis, k))
        break
  return Plan(tuple(mats), schedule, min_per_neuron)


def mask_at(idx, shape):
  """A bool array of `shape`, True at `idx` along the last axis."""
  return jnp.put_along_axis(jnp.zeros(shape, jnp.bool_), idx, True, axis=-1,
                            inplace=False)


def lax_topk_mask(score, k: int):
  """`topk_mask` by `lax.top_k` + scatter (static k only; same ties)."""
  return mask_at(jax.lax.top_k(score, k)[1], score.shape)


def _protect_mask(score, axis: int, n: int):
  """True at the top-n |w| of every vector along `axis`."""
  s = jnp.moveaxis(score, axis, -1)
  return jnp.moveaxis(lax_topk_mask(s, min(n, s.shape[-1])), -1, axis)


def _counter(n: int):
  """Counts True along the last axis. A float32 sum is exact below 2**24
  and measured 1.3-1.5x faster than an int32 one on CPU; larger rows (a
  flattened big matrix) count in int32."""
  if n < 2 ** 24:
    return lambda b: jnp.sum(b.astype(jnp.float32), axis=-1,
                             keepdims=True).astype(jnp.int32)
  return lambda b: jnp.sum(b, axis=-1, keepdims=True, dtype=jnp.int32)


_CHUNK = 512  # entries per packed count: 3 fields of 10 bits hold 0..1023


def _count3(bits, t1, t2, t3):
  """count(bits >= t1), (>= t2), (>= t3) along the last axis in one read:
  each entry adds 1 + 2**10 + 2**20 times its tests to an int32 sum over
  the row (below 1024 entries) or over chunks of _CHUNK, whose three 10-bit
  fields are then summed apart."""
  v = ((bits >= t1).astype(jnp.int32) + ((bits >= t2).astype(jnp.int32) << 10)
       + ((bits >= t3).astype(jnp.int32) << 20))
  n = bits.shape[-1]
  if n < 1024:
    s = jnp.sum(v, axis=-1, keepdims=True)
  else:
    v = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, -n % _CHUNK)])
    s = jnp.sum(v.reshape(*v.shape[:-1], -1, _CHUNK), axis=-1)
  return [jnp.sum((s >> f) & 1023, axis=-1, keepdims=True) for f in (0, 10, 20)]


def _threshold4(bits, k):
  """The largest t in [0, max] with count(bits >= t) >= k (clamped to the
  row's maximum, +inf at most), per row: t's bits are found from the top,
  bit 30 alone and then two at a time, 16 passes over the row."""
  count = _counter(bits.shape[-1])
  t = jnp.where(count(bits >= 1 << 30) >= k, 1 << 30, 0).astype(jnp.int32)

  def body(i, t):
    b = 28 - 2 * i  # this pass decides bits b+1 and b of t
    c = _count3(bits, t + (1 << b), t + (2 << b), t + (3 << b))
    return t + (sum((x >= k).astype(jnp.int32) for x in c) << b)

  t = jax.lax.fori_loop(0, 15, body, t)
  return jnp.minimum(t, jnp.minimum(jnp.max(bits, axis=-1, keepdims=True),
                                    0x7F800000))


def _threshold2(bits, k):
  """`_threshold4` by a 31-step bisection (the reference)."""
  count = _counter(bits.shape[-1])

  def body(_, lohi):  # invariant: count(>= lo) >= k > count(>= hi)
    lo, hi = lohi
    mid = lo + (hi - lo) // 2
    ok = count(bits >= mid) >= k
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

  top = jnp.minimum(jnp.max(bits, axis=-1, keepdims=True), 0x7F800000)
  return jax.lax.fori_loop(0, 31, body, (jnp.zeros_like(top), top + 1))[0]


def _select(bits, k, threshold):
  """True at exactly k entries per row: those above the row's threshold and
  the first of those equal to it."""
  count = _counter(bits.shape[-1])
  n = bits.shape[-1]
  lo = threshold(bits, k)
  gt, eq = bits > lo, bits == lo
  need = k - count(gt)

  def first_ties(_):  # the smallest c with count(eq & index < c) >= need
    iota = jax.lax.broadcasted_iota(jnp.int32, bits.shape, bits.ndim - 1)

    def search(_, lh):
      l, h = lh
      mid = (l + h) // 2
      ok = count(eq & (iota < mid)) >= need
      return jnp.where(ok, l, mid), jnp.where(ok, mid, h)

    _, c = jax.lax.fori_loop(0, n.bit_length(), search,
                             (jnp.zeros_like(lo), jnp.full_like(lo, n)))
    return gt | (eq & (iota < c))

  return jax.lax.cond(jnp.any(count(eq) > need), first_ties,
                      lambda _: gt | eq, None)


def _bits(score):
  """float32 bits as int32, which order as the floats do for x >= 0; -0.0
  (and any negative score) counts as 0.0."""
  bits = jax.lax.bitcast_convert_type(score.astype(jnp.float32), jnp.int32)
  return jnp.maximum(bits, 0)


# Entries per block of rows searched in turn, by backend. On CPU 2**16
# float32 (256 KB) stay in L2 through all 16 passes, where a search over the
# whole tensor went to memory each pass: 1.8-2.4x on the tiny model's 4096
# rows of 128 and 512 (the 4-ary search alone: 1.4x). Not on GPU/TPU, where a
# loop over blocks would serialise the chip.
_BLOCK = {"cpu": 2 ** 16}


def topk_mask(score, k):
  """True at exactly k entries of each row (last axis) of score >= 0: the
  largest, ties going to the lower index (lax.top_k's order). k may be traced
  and may differ per row (shape broadcastable to score.shape[:-1] + (1,)).

  Each row's k-th largest value t comes from a search on the float bit
  pattern (monotonic for x >= 0): 4-ary, two bits of t per pass over the
  row, each pass counting against three thresholds in one read (16 passes;
  a bisection took 31). Entries equal to t are kept as they are unless some
  row has more of them than it needs (rare for t > 0 in float32); only then
  a bisection over the flat index keeps the first ones. All are plain
  reductions, so a row sharded across devices costs no more than one on a
  single device (a cumulative sum here partitioned quadratically). On CPU,
  rows run in blocks that stay in cache. The same bits as
  `reference_topk_mask` (tests/test_sparsity.py); `python -m benchmarks.step
  --topk` compares it with lax.top_k.
  """
  bits = _bits(score)
  shape, n = bits.shape, bits.shape[-1]
  k = jnp.broadcast_to(jnp.asarray(k, jnp.int32), shape[:-1] + (1,))
  rows = math.prod(shape[:-1])
  per = max(1, _BLOCK.get(jax.default_backend(), 0) // n)
  if rows <= per or rows % per:
    return _select(bits, k, _threshold4)
  blocks = [x.reshape(rows // per, per, x.shape[-1]) for x in (bits, k)]
  return jax.lax.map(lambda bk: _select(*bk, _threshold4),
                     blocks).reshape(shape)


def reference_topk_mask(score, k):
  """`topk_mask` by a 31-step bisection over whole rows (for tests)."""
  bits = _bits(score)
  k = jnp.broadcast_to(jnp.asarray(k, jnp.int32), bits.shape[:-1] + (1,))
  return _select(bits, k, _threshold2)


def _score(w, protect_axis=None, n_protect=4):
  """|w| with its neurons' protected top entries raised to +inf."""
  score = jnp.abs(w).astype(jnp.float32)
  if protect_axis is None:
    return score
  return jnp.where(_protect_mask(score, protect_axis, n_protect), jnp.inf,
                   score)


def matrix_mask(w, k, protect_axis=None, n_protect=4):
  """Exactly k entries of matrix w: its neurons' protected top entries
  first, then the largest |w| of the whole matrix."""
  score = _score(w, protect_axis, n_protect)
  return topk_mask(score.reshape(1, -1), k).reshape(w.shape)


def project(params, plan: Plan, step, grouped: bool = True):
  """Parameters with every planned matrix cut to its scheduled k at `step`.

  `grouped`: matrices of one size are rows of one `topk_mask` (its rows are
  independent, so the masks are `matrix_mask`'s): 5 searches instead of 11
  for the tiny model, each pass over all of a group at once."""
  flat = {path_str(p): w for p, w in
          jax.tree_util.tree_flatten_with_path(params)[0]}
  groups = {}
  for m in plan.matrices:
    groups.setdefault(math.prod(m.shape) if grouped else m.path, []).append(m)
  masks = {}
  with jax.named_scope("weight_projection"):  # a profile's label
    for ms in groups.values():
      scores = jnp.stack([_score(flat[m.path], m.protect_axis,
                                 plan.min_per_neuron).reshape(-1) for m in ms])
      ks = jnp.stack([plan.k_at(m, step) for m in ms])[:, None]
      for m, mask in zip(ms, topk_mask(scores, ks)):
        masks[m.path] = mask.reshape(m.shape)

  def one(path, w):
    mask = masks.get(path_str(path))
    return w if mask is None else jnp.where(mask, w, jnp.zeros((), w.dtype))

  return jax.tree_util.tree_map_with_path(one, params)


class SparsifyState(NamedTuple):
  count: Any


def sparsify(plan: Plan) -> optax.GradientTransformation:
  """Turns an update into one that lands on the top-k projected parameters."""

  def init_fn(params):
    del params
    return SparsifyState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("sparsify needs params")
    new = optax.apply_updates(params, updates)
    proj = project(new, plan, state.count)
    updates = jax.tree.map(lambda q, p: q - p, proj, params)
    return updates, SparsifyState(count=state.count + 1)

  return optax.GradientTransformation(init_fn, update_fn)


def l0(params, plan: Plan) -> dict[str, Any]:
  """Nonzero count of each planned matrix."""
  plans = plan.by_path()
  out = {}
  for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
    p = path_str(path)
    if p in plans:
      out[p] = jnp.count_nonzero(w)
  return out

"""AbsTopK as one Pallas kernel: each row selected while it sits on chip.

`abs_topk(x, k)` keeps exactly the k largest |x| of every row (last axis),
ties going to the lower index, bit for bit as `model.abs_topk` with
`sparsity.topk_mask` does. Why a kernel: on a GPU, XLA makes `lax.top_k` a
full sort for k above 16-256, and the search of `sparsity.topk_mask` is
16 passes over the activation through HBM; this kernel reads a block of rows
once, runs a bisection on the float bit pattern in registers and
writes the masked rows once (docs/results.md, "The AbsTopK kernel").

Per row: the bits of |x| as an int32 (for bfloat16 the 16-bit pattern, so 15
bisection steps instead of 31) are monotonic in |x|; a bisection finds the
k-th largest, `lo`, with count(bits >= lo) >= k > count(bits > lo). The
entries above `lo` are kept, and of those equal to it the first
`k - count(bits > lo)`: by a cumulative count (Triton has a scan), or on
TPU by a bisection over the index (Mosaic has no cumsum). Each row's `lo`
and `c` (the kept ties lie at indices < c) leave beside the output, so the
backward (`jax.custom_vjp`) rebuilds the mask from the output y in one
elementwise pass, with no second selection: the kept entries are y's
entries whose bits are > lo, or == lo below c (a dropped entry is 0, so it is
either below lo or a tie at or past c).

Backends: GPU through Triton (block shapes are powers of two: the row is
padded inside the wrapper to the next one, the padding masked to bits -1,
below every |x|); CPU through Pallas' interpreter (slow; for tests). TPU
through Mosaic: the same algorithm with the index tie-break and blocks of a
multiple of 8 rows; it lowers, but has never been compiled or measured on a
TPU.
Rows are independent, so any leading shape works (flattened to rows) and
under vmap Pallas adds a grid axis.
"""

import functools
import math

import jax
from jax.ad_checkpoint import checkpoint_name
from jax.experimental import pallas as pl
import jax.numpy as jnp

# Per dtype: the integer of its width, |x|'s bits (sign off), the bit
# pattern of inf (NaNs lie above it) and the bisection steps that cover
# [0, inf].
_INT = {jnp.dtype(jnp.float32): jnp.int32, jnp.dtype(jnp.bfloat16): jnp.int16}
_SIGN_OFF = {jnp.dtype(jnp.float32): 0x7FFFFFFF,
             jnp.dtype(jnp.bfloat16): 0x7FFF}
_INF = {jnp.dtype(jnp.float32): 0x7F800000, jnp.dtype(jnp.bfloat16): 0x7F80}
_STEPS = {jnp.dtype(jnp.float32): 31, jnp.dtype(jnp.bfloat16): 15}


def magnitude_bits(x):
  """int32 of |x|'s bit pattern (bfloat16: its 16 bits), monotonic in |x|:
  the order `sparsity.topk_mask` compares in (its float32 bits of a
  bfloat16 are these shifted left by 16)."""
  dt = jnp.dtype(x.dtype)
  b = jax.lax.bitcast_convert_type(x, _INT[dt]).astype(jnp.int32)
  return b & _SIGN_OFF[dt]


def _count(b):
  return jnp.sum(b.astype(jnp.int32), axis=1)


def _select(b, k: int, dtype, tie_break: str):
  """(keep, lo, c) of a block of rows of magnitude bits b [R, N] (-1 =
  padding) of a `dtype` input: exactly k kept per row; see the module
  docstring."""
  top = jnp.minimum(jnp.max(b, axis=1), _INF[dtype])

  def bisect(_, lohi):  # count(>= lo) >= k > count(>= hi)
    lo, hi = lohi
    mid = lo + ((hi - lo) >> 1)
    ok = _count(b >= mid[:, None]) >= k
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

  lo, _ = jax.lax.fori_loop(0, _STEPS[dtype], bisect,
                            (jnp.zeros_like(top), top + 1))
  gt = b > lo[:, None]
  eq = b == lo[:, None]
  need = k - _count(gt)
  n = b.shape[1]
  iota = jax.lax.broadcasted_iota(jnp.int32, b.shape, 1)
  if tie_break == "cumsum":
    first = eq & (jnp.cumsum(eq.astype(jnp.int32), axis=1) <= need[:, None])
    c = jnp.max(jnp.where(first, iota + 1, 0), axis=1)
  else:  # the smallest c with count(eq & iota < c) >= need (0 if need 0)

    def search(_, lh):  # count(eq & iota < l) < need <= count(... < h)
      l, h = lh
      mid = (l + h) >> 1
      ok = _count(eq & (iota < mid[:, None])) >= need
      return jnp.where(ok, l, mid), jnp.where(ok, mid, h)

    _, c = jax.lax.fori_loop(0, n.bit_length(), search,
                             (jnp.zeros_like(lo), jnp.full_like(lo, n)))
    c = jnp.where(need > 0, c, 0)
    first = eq & (iota < c[:, None])
  return gt | first, lo, c


def _kernel(x_ref, y_ref, lo_ref, c_ref, *, k, n, tie_break):
  x = x_ref[...]
  b = magnitude_bits(x)
  if n < b.shape[1]:  # padded columns: below every magnitude, never kept
    col = jax.lax.broadcasted_iota(jnp.int32, b.shape, 1)
    b = jnp.where(col < n, b, -1)
  keep, lo, c = _select(b, k, jnp.dtype(x.dtype), tie_break)
  y_ref[...] = jnp.where(keep, x, jnp.zeros((), x.dtype))
  lo_ref[...] = lo[:, None]
  c_ref[...] = c[:, None]


def default_block_rows(n_pad: int, platform: str) -> int:
  """Rows per program: about 8k elements in flight (a guess until measured
  on a device; benchmarks/gpu_check.sh times others); a multiple of 8 on TPU
  (its sublanes)."""
  r = max(1, min(64, 8192 // n_pad))
  return max(8, r) if platform == "tpu" else r


def _pad_to(a, size, axis):
  extra = size - a.shape[axis]
  if extra == 0:
    return a
  widths = [(0, 0)] * a.ndim
  widths[axis] = (0, extra)
  return jnp.pad(a, widths)


def forward_with_residuals(x, k: int, *, block_rows: int | None = None,
                           platform: str | None = None,
                           tie_break: str | None = None,
                           num_warps: int | None = None):
  """(y, lo, c): y = x with all but each row's top-k |x| zeroed; lo [..., 1]
  the k-th largest magnitude bits, c [..., 1] the end of its kept ties.

  `platform` (default: JAX's default backend) picks the lowering: "gpu"
  Triton, "tpu" Mosaic, "cpu" the interpreter. `tie_break`: "cumsum"
  (default but on TPU) or "bisect"; `block_rows`, `num_warps`: tuning."""
  dt = jnp.dtype(x.dtype)
  if dt not in _INT:
    raise TypeError(f"topk_pallas takes float32 or bfloat16, got {dt}")
  *lead, n = x.shape
  if not 0 <= k < n:
    raise ValueError(f"topk_pallas: k={k} must be in [0, {n})")
  platform = platform or jax.default_backend()
  tie_break = tie_break or ("bisect" if platform == "tpu" else "cumsum")
  rows = math.prod(lead)
  x2 = x.reshape(rows, n)
  n_pad = pl.next_power_of_2(n)
  r = block_rows or min(default_block_rows(n_pad, platform),
                        pl.next_power_of_2(rows))
  rows_pad = pl.cdiv(rows, r) * r
  x2 = _pad_to(_pad_to(x2, n_pad, 1), rows_pad, 0)
  kernel = functools.partial(_kernel, k=k, n=n, tie_break=tie_break)
  params = {}
  if platform == "gpu":
    from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
    # (TritonCompilerParams in older jax.) Passing them picks Triton over
    # Mosaic GPU, the default of jax 0.10 to 0.12.
    params_cls = (getattr(plgpu, "CompilerParams", None) or
                  plgpu.TritonCompilerParams)
    params["compiler_params"] = params_cls(
        num_warps=num_warps or (8 if r * n_pad >= 4096 else 4), num_stages=1)
  y, lo, c = pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct(x2.shape, dt),
                 jax.ShapeDtypeStruct((rows_pad, 1), jnp.int32),
                 jax.ShapeDtypeStruct((rows_pad, 1), jnp.int32)),
      grid=(rows_pad // r,),
      in_specs=[pl.BlockSpec((r, n_pad), lambda i: (i, 0))],
      out_specs=(pl.BlockSpec((r, n_pad), lambda i: (i, 0)),
                 pl.BlockSpec((r, 1), lambda i: (i, 0)),
                 pl.BlockSpec((r, 1), lambda i: (i, 0))),
      interpret=platform == "cpu",
      name="abs_topk",
      **params,
  )(x2)
  y = y[:rows, :n].reshape(x.shape)
  return (y, lo[:rows].reshape(*lead, 1), c[:rows].reshape(*lead, 1))


def mask_from_residuals(y, lo, c):
  """The kept entries, from the output and each row's (lo, c)."""
  b = magnitude_bits(y)
  iota = jax.lax.broadcasted_iota(jnp.int32, b.shape, b.ndim - 1)
  return (b > lo) | ((b == lo) & (iota < c))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _abs_topk(x, k, save_as, opts):
  del save_as
  return forward_with_residuals(x, k, **dict(opts))[0]


def _abs_topk_fwd(x, k, save_as, opts):
  y, lo, c = forward_with_residuals(x, k, **dict(opts))
  if save_as:  # y is the output and a residual: one value, saved once
    y = checkpoint_name(y, save_as[0])
    lo, c = checkpoint_name((lo, c), save_as[1])
  return y, (y, lo, c)


def _abs_topk_bwd(k, save_as, opts, res, g):
  del k, save_as, opts
  return (jnp.where(mask_from_residuals(*res), g, jnp.zeros((), g.dtype)),)


_abs_topk.defvjp(_abs_topk_fwd, _abs_topk_bwd)


def abs_topk(x, k: int, save_as: tuple[str, str] | None = None, **opts):
  """x with all but the k largest |x| of each row zeroed (ties to the lower
  index); the gradient flows to the kept entries. `save_as`: checkpoint
  names of the output and of the two int32 per row that the backward needs
  beside it, for a remat policy (`save_only_these_names`) that keeps them
  so that no selection is recomputed. `opts`: block_rows, platform,
  tie_break, num_warps (see forward_with_residuals)."""
  return _abs_topk(x, k, save_as, tuple(sorted(opts.items())))

"""The matched-loss frontier of `--mode=compare` (method.md §9): geometric
means of circuit counts, log-linear interpolation of the dense models'
counts at a sparse model's loss, the dense/sparse ratios and the headline,
and a bootstrap over tasks. Pure functions of numbers; `compare` and
`decomposition` both use them.
"""

import math

import numpy as np


def geomean(x, floor: float = 1.0) -> float:
  """Geometric mean of counts (a count of 0 counts as `floor`, 1)."""
  x = np.maximum(np.asarray(x, np.float64), floor)
  return float(np.exp(np.mean(np.log(x))))


def interpolate_log(xs, ys, x) -> tuple[float, bool, tuple[int, int]]:
  """y at x with log(y) linear in x between the two nearest points around x
  (or, outside their range, through the two nearest points: extrapolated).
  Returns (y, extrapolated, (i, j) the indices of the two points used)."""
  xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
  if len(xs) < 2:
    raise ValueError("interpolation needs at least two points")
  order = np.argsort(xs, kind="stable")
  sx, ly = xs[order], np.log(np.maximum(ys[order], 1e-300))
  extrapolated = bool(x < sx[0] or x > sx[-1])
  i = int(np.clip(np.searchsorted(sx, x, side="right") - 1, 0, len(sx) - 2))
  j = i + 1
  if sx[j] == sx[i]:
    y = 0.5 * (ly[i] + ly[j])
  else:
    y = ly[i] + (x - sx[i]) / (sx[j] - sx[i]) * (ly[j] - ly[i])
  return float(np.exp(y)), extrapolated, (int(order[i]), int(order[j]))


def matched_ratios(losses, families, gm_edges) -> tuple[list[dict], dict]:
  """Dense/sparse ratio of geometric-mean edges at each sparse model's loss,
  and the headline (see the module docstring)."""
  dense = [i for i, f in enumerate(families) if f == "dense"]
  dl = [losses[i] for i in dense]
  de = [gm_edges[i] for i in dense]
  rows = []
  for i, f in enumerate(families):
    if f != "sparse":
      continue
    at, extra, (a, b) = interpolate_log(dl, de, losses[i])
    rows.append({"model": i, "dense_edges_at_loss": at,
                 "ratio": at / max(gm_edges[i], 1.0), "extrapolated": extra,
                 "dense_models": [dense[a], dense[b]]})
  inside = [r for r in rows if not r["extrapolated"]]
  use = inside or rows
  head = {"ratio": (geomean([r["ratio"] for r in use], floor=1e-300)
                    if use else math.nan),
          "extrapolated": not inside, "sparse_models": [r["model"]
                                                        for r in use]}
  return rows, head


def bootstrap(values_MxT, statistic, n: int, seed: int,
              level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
  """Percentile interval of `statistic(values[:, idx])` over n resamples of
  the tasks (columns) with replacement, the same resample for every model.
  Returns (lo, hi), each shaped like the statistic."""
  values = np.asarray(values_MxT, np.float64)
  rng = np.random.default_rng(seed)
  t = values.shape[1]
  stats = np.asarray([statistic(values[:, rng.integers(0, t, t)])
                      for _ in range(n)])
  q = (1 - level) / 2
  return np.quantile(stats, q, axis=0), np.quantile(stats, 1 - q, axis=0)

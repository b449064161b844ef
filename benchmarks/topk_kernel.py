"""AbsTopK kernel vs XLA: `python -m benchmarks.topk_kernel
[--config=configs/paper.py:1gpu] [--quick] [--out=DIR] [--rounds=5]`.

1. One AbsTopK call at the paper's shapes (131,072 rows = 512 x 256
   tokens, x 1024 keep 256 and x 4096 keep 1024, the config's compute
   dtype): the memory floor (one read and one write, `-x`), `lax.top_k` +
   scatter, the XLA bisection (`model.abs_topk`, impl "xla") and the kernel
   (impl "pallas") forward and forward + backward, each checked exact
   against `sparsity.topk_mask`; then the kernel forward under other
   (block_rows, num_warps) on a GPU, to choose its defaults.
2. The config's train step with topk_impl xla, pallas and with afrac 0, in
   interleaved rounds (`benchmarks.step.race`): ms/step, tokens/s, the
   activation top-k share of each (1 - step(afrac 0) / step) and XLA's
   memory estimate of each.

`--quick`: CPU-sized shapes and a one-layer model with the kernel
interpreted, to check the script end to end (its figures mean nothing).
`--nostep` / `--nocalls` skip a part. Each part printed is also written as
JSON to --out/topk_kernel_calls.json and topk_kernel_step.json.
"""

import json
import os
import time

import jax
import jax.numpy as jnp

from benchmarks import step as step_bench
from sparse_circuits import model as model_lib
from sparse_circuits import sparsity
from sparse_circuits import topk_pallas

PAPER_SHAPES = ((131_072, 1024, 256), (131_072, 4096, 1024))
QUICK_SHAPES = ((512, 256, 64), (128, 1000, 250))  # 1000: a padded width
QUICK_FLAGS = {"n_layer": 1, "d_model": 32, "n_head": 2, "d_head": 16,
               "d_mlp": 128, "block_size": 32}
TUNE = ((1, 4), (2, 4), (4, 8), (8, 8), (16, 8))  # (block_rows, num_warps)


def _methods(k):
  return {
      "memory floor (-x)": lambda x: -x,
      "lax.top_k + scatter": lambda x: jnp.where(
          sparsity.lax_topk_mask(jnp.abs(x), k), x, jnp.zeros((), x.dtype)),
      "xla (topk_mask)": lambda x: model_lib.abs_topk(x, k, "xla"),
      "pallas": lambda x: model_lib.abs_topk(x, k, "pallas"),
  }


def _loss(f):
  return lambda x: jnp.sum(f(x).astype(jnp.float32) * x.astype(jnp.float32))


def per_call(shapes, dtype, rounds=5, tune=False) -> list[dict]:
  """Rows of {shape, method, fwd_ms, fwd_bwd_ms, exact}."""
  rows = []
  for n_rows, width, k in shapes:
    x = jax.random.normal(jax.random.key(0), (n_rows, width), dtype)
    want = jax.jit(lambda x, k=k: sparsity.topk_mask(jnp.abs(x), k))(x)
    fns, exact, methods = {}, {}, _methods(k)
    if tune:
      for r, w in TUNE:
        methods[f"pallas rows {r} warps {w}"] = (
            lambda x, k=k, r=r, w=w: topk_pallas.abs_topk(
                x, k, block_rows=r, num_warps=w))
    for name, f in methods.items():
      fwd = jax.jit(f)
      if name != "memory floor (-x)":
        y = fwd(x)
        exact[name] = bool(jnp.array_equal(
            y, jnp.where(want, x, jnp.zeros((), x.dtype))))
      fns[name] = step_bench._runner(fwd, x)  # pylint: disable=protected-access
      if not name.startswith("pallas rows"):
        fns[name + " +bwd"] = step_bench._runner(  # pylint: disable=protected-access
            jax.jit(jax.grad(_loss(f))), x)
    t = step_bench.race(fns, rounds=rounds, seconds=0.3)
    for name in methods:
      rows.append(dict(shape=f"{n_rows} x {width} keep {k} "
                       f"{jnp.dtype(dtype).name}", method=name,
                       fwd_ms=1e3 * t[name],
                       fwd_bwd_ms=(1e3 * t[name + " +bwd"]
                                   if name + " +bwd" in t else None),
                       exact=exact.get(name)))
    del x, want
  return rows


def step_side_by_side(config, rounds=3) -> dict:
  """The train step with each topk_impl and with afrac 0, interleaved."""
  device = jax.devices()[0]
  steppers, out = {}, {}
  for name, impl, afrac in (("xla", "xla", None), ("pallas", "pallas", None),
                            ("afrac 0", "xla", 0.0)):
    c = config.copy_and_resolve_references()
    c.model.topk_impl = impl
    if afrac is not None:
      c.model.afrac = afrac
    start = time.perf_counter()
    steppers[name] = step_bench._Stepper(c, device)  # pylint: disable=protected-access
    out[f"{name} compile_s"] = time.perf_counter() - start
    out[f"{name} memory_gb"] = steppers[name].memory.per_device_bytes / 1e9
  t = step_bench.race({n: s.run for n, s in steppers.items()}, rounds=rounds)
  tokens = config.train.batch_size * config.model.block_size
  for name, s in t.items():
    out[f"{name} ms"] = 1e3 * s
    out[f"{name} tokens_per_s"] = tokens / s
  for name in ("xla", "pallas"):
    out[f"{name} activation_topk_share"] = 1 - t["afrac 0"] / t[name]
  stats = getattr(device, "memory_stats", lambda: None)() or {}
  if "peak_bytes_in_use" in stats:
    out["device peak_gb"] = stats["peak_bytes_in_use"] / 1e9
  out["device"] = f"{device.platform} ({device.device_kind})"
  out["tokens_per_step"] = tokens
  return out


def format_rows(rows) -> str:
  lines = [f"{'shape':<30}{'method':<28}{'fwd ms':>9}{'fwd+bwd':>9}  exact"]
  for r in rows:
    b = f"{r['fwd_bwd_ms']:>9.3f}" if r["fwd_bwd_ms"] is not None else " " * 9
    e = {None: "-", True: "yes", False: "NO"}[r["exact"]]
    lines.append(f"{r['shape']:<30}{r['method']:<28}{r['fwd_ms']:>9.3f}{b}"
                 f"  {e}")
  return "\n".join(lines)


def format_step(s) -> str:
  lines = [f"train step on {s['device']}, {s['tokens_per_step']} tokens",
           f"{'':<12}{'ms/step':>10}{'tokens/s':>12}{'act top-k':>11}"
           f"{'memory GB':>11}{'compile s':>11}"]
  for name in ("xla", "pallas", "afrac 0"):
    share = s.get(f"{name} activation_topk_share")
    sh = f"{100 * share:>10.1f}%" if share is not None else " " * 11
    lines.append(f"  {name:<10}{s[f'{name} ms']:>10.2f}"
                 f"{s[f'{name} tokens_per_s']:>12,.0f}{sh}"
                 f"{s[f'{name} memory_gb']:>11.2f}"
                 f"{s[f'{name} compile_s']:>11.0f}")
  if "device peak_gb" in s:
    lines.append(f"  device peak memory {s['device peak_gb']:.2f} GB")
  return "\n".join(lines)


def run(config, quick=False, rounds=5, out_dir=None, calls=True,
        step=True) -> dict:
  """The parts asked for, printed, each also written to
  out_dir/topk_kernel_{calls,step}.json as soon as it is done."""
  config = config.copy_and_resolve_references()
  if quick:
    config.model.update(QUICK_FLAGS)
    config.train.batch_size, config.train.microbatches = 4, 1
    config.sparsity.pfrac, config.sparsity.expansion_factor = 1.0, 2.0
  out = {"backend": jax.default_backend(), "jax": jax.__version__}

  def save(part):
    if out_dir:
      os.makedirs(out_dir, exist_ok=True)
      with open(os.path.join(out_dir, f"topk_kernel_{part}.json"), "w") as f:
        json.dump({**out, part: out[part]}, f, indent=1)

  if calls:
    out["calls"] = per_call(QUICK_SHAPES if quick else PAPER_SHAPES,
                            jnp.dtype(config.model.compute_dtype),
                            rounds=2 if quick else rounds,
                            tune=jax.default_backend() == "gpu")
    print(format_rows(out["calls"]), flush=True)
    save("calls")
  if step:
    out["step"] = step_side_by_side(config, rounds=1 if quick else 3)
    print(format_step(out["step"]), flush=True)
    save("step")
  return out


def main():
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  cfg_flag = config_flags.DEFINE_config_file(
      "config", "configs/paper.py:1gpu", "ml_collections config file.")
  quick = flags.DEFINE_bool("quick", False, "CPU-sized shapes and model.")
  rounds = flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds.", 1)
  calls = flags.DEFINE_bool("calls", True, "Time one AbsTopK call.")
  step = flags.DEFINE_bool("step", True, "Time the train step.")
  out = flags.DEFINE_string("out", None, "Folder for the JSON files.")

  def _main(argv):
    del argv
    run(cfg_flag.value, quick.value, rounds.value, out.value, calls.value,
        step.value)
  app.run(_main)


if __name__ == "__main__":
  main()

"""`--mode=compile_check`: compile the train and prune steps for the
configured mesh without running them, before spending pod time.

Both steps are lowered from `jax.ShapeDtypeStruct`s carrying the run's
shardings and compiled ahead of time; nothing is allocated or executed. It
prints, per device, XLA's memory estimate (arguments, outputs, temporaries,
peak) and FLOPs, the tokens per step and, on an accelerator whose peak
`flops.PEAK_BF16_TFLOPS` knows, the step time those FLOPs take at 40% of
it; and it fails (exit status 1, a message on stderr) when

  * the mesh does not divide the model or the batch (the message names the
    mesh axis and the parameter), or
  * a step needs more memory per device than `distributed.device_memory_gb`
    (0 = the device's own capacity where JAX reports it, GPUs; no limit on
    CPU).

Devices: the attached ones (on CPU, fake ones with
XLA_FLAGS=--xla_force_host_platform_device_count=N), or, with
`distributed.compile_topology` set (e.g. "v5e:4x4"), a TPU slice described
by `jax.experimental.topologies.get_topology_desc`, compiled for on a
machine without TPUs (needs libtpu installed; see BUILD.md).
"""

import dataclasses
import math
import sys
import time

import jax
import jax.numpy as jnp

from sparse_circuits import flops
from sparse_circuits.circuits import search
from sparse_circuits import sharding
from sparse_circuits import sites as sites_lib
from sparse_circuits import train

GB = 1e9
# Prompt length the prune step is compiled for: the longest built-in task
# prompt is 64 tokens (user tasks may be longer, up to model.block_size).
PROMPT_LEN = 64
# The utilisation the expected step time is quoted at: what a well-tuned
# transformer step reaches on current accelerators.
PEAK_SHARE = 0.4


class CompileCheckError(RuntimeError):
  pass


@dataclasses.dataclass
class Report:
  name: str
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  peak_bytes: int
  flops: float          # per device, XLA's cost analysis
  compile_seconds: float

  @property
  def per_device_bytes(self) -> int:
    """Peak if XLA reports it, else live arguments + outputs + temporaries."""
    live = (self.argument_bytes + self.output_bytes - self.alias_bytes +
            self.temp_bytes)
    return max(self.peak_bytes, live)


def _settings(config, key):
  d = config.get("distributed", None)
  defaults = dict(device_memory_gb=0.0, compile_topology="",
                  compile_chip_config="default",
                  compile_chips_per_host=(2, 2, 1))
  return d.get(key, defaults[key]) if d is not None else defaults[key]


def devices_for(config):
  """The attached devices, or a TPU topology's compile-only devices."""
  topo = _settings(config, "compile_topology")
  if not topo:
    return jax.devices()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    desc = topologies.get_topology_desc(
        topo, "tpu", chip_config_name=_settings(config, "compile_chip_config"),
        chips_per_host_bounds=tuple(_settings(config,
                                              "compile_chips_per_host")))
  except Exception as e:  # pylint: disable=broad-except
    raise CompileCheckError(
        f"distributed.compile_topology={topo!r}: cannot describe that TPU "
        f"topology here ({type(e).__name__}: {e}); install libtpu "
        "(pip install 'jax[tpu]') on the compiling machine") from e
  return list(desc.devices)


def _compile(name, jitted, *abstract_args):
  start = time.perf_counter()
  compiled = jitted.lower(*abstract_args).compile()
  return report_of(name, compiled, time.perf_counter() - start)


def report_of(name, compiled, seconds=0.0) -> Report:
  """XLA's memory and cost analysis of a compiled program."""
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  get = lambda f: int(getattr(mem, f, 0) or 0) if mem is not None else 0
  return Report(name, get("argument_size_in_bytes"),
                get("output_size_in_bytes"), get("alias_size_in_bytes"),
                get("temp_size_in_bytes"), get("peak_memory_in_bytes"),
                float((cost or {}).get("flops", float("nan"))), seconds)


def train_step_args(setup) -> tuple:
  """The train step's arguments as ShapeDtypeStructs with their shardings."""
  config = setup.config
  rep = sharding.replicated(setup.mesh)
  batch = jax.ShapeDtypeStruct(
      (config.train.batch_size, config.model.block_size + 1), jnp.int32,
      sharding=sharding.batch_sharding(setup.mesh))
  return (setup.abstract_params, setup.abstract_opt_state,
          jax.ShapeDtypeStruct((), jnp.int32, sharding=rep), batch)


def train_step_report(setup) -> Report:
  return _compile("train step", train.make_train_step(setup),
                  *train_step_args(setup))


def prune_step_report(setup) -> Report:
  """The vectorised mask-training step of `search.programs`, for the
  config's sweep, on PROMPT_LEN-token prompts (all replicated: the prune
  program does not shard its batch)."""
  config, cfg = setup.config, setup.cfg
  pc = config.prune
  sites = sites_lib.node_sites(cfg)
  n_set = int(pc.sweep_size)
  n_prompts, t_len = max(config.tasks.n_train, 2), min(PROMPT_LEN,
                                                         cfg.block_size)
  bs = 2 * min(pc.batch_size, n_prompts // 2)
  rep = sharding.replicated(setup.mesh)

  def r(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=rep)

  init_fn, step_fn, _ = search.programs(cfg, sites, pc)
  tau = {s.name: r((n_set, s.width)) for s in sites}
  opt_state = jax.tree.map(lambda a: r(a.shape, a.dtype),
                           jax.eval_shape(init_fn, tau))
  args = (tau, opt_state, r((n_set,), jnp.bool_), r(()),
          r((n_set, bs), jnp.int32),
          {f: r((n_set,)) for f in ("k_coef", "lr", "temperature")},
          r((n_prompts, t_len), jnp.int32), r((n_prompts,), jnp.int32),
          r((n_set, n_prompts), jnp.int32),
          r((n_set, n_prompts), jnp.int32), setup.abstract_params,
          {s.name: r((s.width,)) for s in sites})
  return _compile(f"prune step ({n_set} settings)", step_fn, *args)


def memory_limit_bytes(config, devices) -> float:
  gb = float(_settings(config, "device_memory_gb"))
  if gb > 0:
    return gb * GB
  try:
    stats = devices[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  return float(stats.get("bytes_limit", math.inf))


def check(config) -> list[Report]:
  """Compiles both steps; raises CompileCheckError naming what is wrong."""
  devices = devices_for(config)
  try:
    setup = train.make_setup(config, devices)
  except ValueError as e:  # the mesh does not divide a parameter/the batch
    raise CompileCheckError(str(e)) from e
  print(f"compile_check: {config.get('name', '?')} on "
        f"{len(devices)} {devices[0].platform} devices, mesh "
        f"{dict(setup.mesh.shape)}", flush=True)
  reports = [train_step_report(setup), prune_step_report(setup)]
  limit = memory_limit_bytes(config, devices)
  print(format_table(reports, limit, config, devices), flush=True)
  over = [r for r in reports if r.per_device_bytes > limit]
  if over:
    raise CompileCheckError(
        "; ".join(f"{r.name} needs {r.per_device_bytes / GB:.2f} GB per "
                  f"device" for r in over) +
        f", over the limit of {limit / GB:.3g} GB "
        "(distributed.device_memory_gb): shard more (mesh.shape fsdp/"
        "tensor), lower train.batch_size, or use bfloat16 compute")
  return reports


def format_table(reports, limit, config, devices) -> str:
  n_devices = len(devices)
  t = config.train
  tokens = t.batch_size * config.model.block_size
  model_flops = flops.model_flops_per_token(config) * tokens
  lim = "none" if math.isinf(limit) else f"{limit / GB:.2f} GB"
  rows = [f"{'program':<26} {'args':>9} {'temp':>9} {'peak/live':>10} "
          f"{'GFLOP':>10} {'compile':>8}   (per device; limit {lim})"]
  for r in reports:
    rows.append(f"{r.name:<26} {r.argument_bytes / GB:>7.3f}GB "
                f"{r.temp_bytes / GB:>7.3f}GB {r.per_device_bytes / GB:>8.3f}GB"
                f" {r.flops / 1e9:>10.1f} {r.compile_seconds:>7.1f}s")
  per_device = model_flops / n_devices
  micro = t.microbatches
  rows.append(f"tokens per train step: {tokens:,} ({t.batch_size} x "
              f"{config.model.block_size}, {micro} microbatch"
              f"{'es' * (micro > 1)} of {t.batch_size // micro}; remat "
              f"{config.model.remat}, compute "
              f"{config.model.compute_dtype})")
  rows.append(f"model FLOPs of one train step (6 N_active + attention, all "
              f"devices): {model_flops / 1e9:,.1f} GFLOP = "
              f"{per_device / 1e9:,.1f} GFLOP per device")
  kind = devices[0].device_kind
  peak = flops.peak_tflops(kind)
  if peak is not None:
    step_s = per_device / (PEAK_SHARE * peak * 1e12)
    rows.append(f"at {PEAK_SHARE:.0%} of the {kind} bf16 peak ({peak:g} "
                f"TFLOP/s per device) a train step takes {1e3 * step_s:,.0f}"
                f" ms: {tokens / step_s:,.0f} tokens/s")
  if micro > 1 or config.model.remat != "none":
    rows.append("(XLA's GFLOP count takes a loop body once: the train step's "
                "is one microbatch's, with one layer's remat)")
  excess = reports[0].flops / per_device
  if excess > 1.5:
    rows.append(f"warning: XLA counts {excess:.1f}x the model FLOPs per "
                "device in the train step: work is replicated or "
                "superlinear under this sharding (look for SPMD "
                "'rematerialization' warnings above)")
  return "\n".join(rows)


def run(config, workdir: str):
  """`--mode=compile_check`; exits 1 with a message when it would not fit."""
  del workdir  # nothing is read or written
  try:
    return check(config)
  except CompileCheckError as e:
    print(f"compile_check FAILED: {e}", file=sys.stderr, flush=True)
    sys.exit(1)

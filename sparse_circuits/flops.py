"""The model's arithmetic: parameter counts, FLOPs per token, device peaks.

  model FLOPs per token = 6 N_active + 6 n_layer L (n_head d_head)

N_active counts the weights of every matrix product (the kernels of c_attn,
c_proj, c_fc and lm_head), zeros of the sparse matrices included since the
step multiplies dense matrices; table lookups (wte, wpe, the bigram table)
and vectors do no matmul work and are left out. 6 N_active is the forward
and backward matmul work, the second term the causal attention scores and
values (QK^T and PV over half the L x L square, x3 for the backward).
Counting all 110.2M parameters of the paper model instead (as the authors'
trainer does) gives 7% more; on the tiny config, whose 4.2M-entry bigram
table dwarfs its 0.66M matmul weights, that convention would overstate the
work 6x. Recomputation (`model.remat`) is not counted: these are model
FLOPs, not hardware FLOPs.
"""

import math

import jax

from sparse_circuits import model as model_lib
from sparse_circuits import sparsity

# Dense bf16 matrix peak (TFLOP/s, vendor datasheets) by a substring of
# `device.device_kind`, most specific first; used to say what a step should
# take at a given utilisation, not to measure anything.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H200", 989.0), ("H100", 989.0),
    ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
    ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5p", 459.0),
    ("TPU v5", 459.0), ("TPU v6 lite", 918.0), ("TPU v6e", 918.0),
    ("TPU v4", 275.0),
)


def param_count(cfg: model_lib.ModelConfig, matmul_only=False) -> int:
  """All parameters, or only the matmul weights (N_active)."""
  flat = jax.tree_util.tree_flatten_with_path(model_lib.abstract_params(cfg))
  return sum(math.prod(a.shape) for p, a in flat[0]
             if not matmul_only or sparsity.path_str(p).endswith("kernel"))


def model_flops_per_token(config) -> float:
  """6 N_active + 6 n_layer L d_attn (see the module docstring)."""
  cfg = model_lib.ModelConfig.from_config(config.model)
  d_attn = cfg.n_head * cfg.d_head
  return (6.0 * param_count(cfg, matmul_only=True) +
          6.0 * cfg.n_layer * cfg.block_size * d_attn)


def peak_tflops(device_kind: str) -> float | None:
  """The bf16 dense peak of a known accelerator, else None (e.g. CPUs)."""
  for key, tflops in PEAK_BF16_TFLOPS:
    if key.lower() in device_kind.lower():
      return tflops
  return None

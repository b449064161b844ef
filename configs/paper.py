"""The paper config: the authors' default model (8 layers, d_model 1024,
batch 512 x 256 tokens).

  python -m sparse_circuits.main --config=configs/paper.py --mode=train --workdir=runs/paper
  python -m sparse_circuits.main --config=configs/paper.py:1gpu --mode=compile_check

`:1gpu` fits the authors' global batch on one 80 GB GPU, as their trainer
does: bfloat16 compute (float32 master weights), the batch in sequential
microbatches (`train.microbatches`) and each block's forward recomputed in
the backward except its AbsTopK selections (`model.remat = "topk"`).
`compile_check` then fails above 70 GB per device (an H100's 80 GB with a
margin); BUILD.md ("One GPU") has what it printed and the measured step.
"""

from sparse_circuits import config_lib

# (microbatches, remat) of the one-GPU variant.
ONE_GPU = (8, "topk")


def get_config(arg: str = ""):
  if arg not in ("", "1gpu"):
    raise ValueError(f"configs/paper.py:{arg}: want no argument or 1gpu")
  c = config_lib.base_config("paper")
  if arg == "1gpu":
    c.mesh.shape = (1, 1, 1)
    c.model.compute_dtype = "bfloat16"
    c.train.microbatches, c.model.remat = ONE_GPU
    c.distributed.device_memory_gb = 70.0
  return c

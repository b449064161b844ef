"""The paper config: the authors' default model (8 layers, d_model 1024,
batch 512 x 256 tokens).

  python -m sparse_circuits.main --config=configs/paper.py --mode=train --workdir=runs/paper
  python -m sparse_circuits.main --config=configs/paper.py:1gpu --mode=compile_check

`:1gpu` fits the authors' global batch on one 80 GB GPU, as their trainer
does: bfloat16 compute (float32 master weights) and the batch in 8
sequential microbatches of 64 x 256 (`train.microbatches`), and the prune
sweep on 8 pairs per setting and step; compile_check then fails above 70 GB
per device (an H100's 80 GB with a margin).
Temporaries of the train step as XLA:CPU compiles it for one device
(`model.remat` recomputes blocks in the backward, see sparse_circuits/model.py):

  microbatches, remat    1, none   8, none   4, topk   2, topk   1, block
  temporaries (GB)        310.1      40.2      24.0      46.8      47.0

All but the first fit; 8 x none is chosen because it recomputes nothing
(remat adds the forward's matmuls, a third of the step's FLOPs) and 64
sequences of 256 tokens still make large matrix products. The others suit
smaller cards; benchmarks/gpu_check.sh times them side by side on a GPU.
"""

from sparse_circuits import config_lib

# (microbatches, remat) of the one-GPU variant.
ONE_GPU = (8, "none")


def get_config(arg: str = ""):
  if arg not in ("", "1gpu"):
    raise ValueError(f"configs/paper.py:{arg}: want no argument or 1gpu")
  c = config_lib.base_config("paper")
  if arg == "1gpu":
    c.mesh.shape = (1, 1, 1)
    c.model.compute_dtype = "bfloat16"
    c.train.microbatches, c.model.remat = ONE_GPU
    c.distributed.device_memory_gb = 70.0
    # The prune sweep trains all its settings at once: 32 settings x 64
    # pairs of 64-token prompts needed 283 GB; 8 pairs per setting and step
    # (as the tiny config's search) fit.
    c.prune.batch_size = 8
  return c

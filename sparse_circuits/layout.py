"""Where a run's files live: the one place a workdir's paths are spelled out.

  WORKDIR/
    LOCK                      while a training process holds the run
    data/                     tokenizer/, shards, manifest.json
    data_summary.json         what --mode=data read and skipped
    checkpoints/<step>/       params, optimizer state, data position, meta
    metrics.jsonl             one row per logged training step
    eval_summary.json         --mode=eval
    prune/means_<step>.npz    the mean activations circuits are ablated to
    circuits/prune_summary.json
    circuits/<task>/          circuit.json, index.html, graph exports
    index.html                the run report
    export/                   --mode=export (the authors' format)
"""

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Layout:
  """The paths of one run; `Layout(workdir)`. Every path is absolute."""
  workdir: str

  def __post_init__(self):
    object.__setattr__(self, "workdir",
                       os.path.abspath(os.fspath(self.workdir)))

  def _join(self, *parts) -> str:
    return os.path.join(self.workdir, *map(str, parts))

  @property
  def lock(self) -> str:
    return self._join("LOCK")

  @property
  def data(self) -> str:
    return self._join("data")

  @property
  def manifest(self) -> str:
    return self._join("data", "manifest.json")

  @property
  def tokenizer(self) -> str:
    """The tokenizer --mode=data trains (a run may name another)."""
    return self._join("data", "tokenizer")

  @property
  def data_summary(self) -> str:
    return self._join("data_summary.json")

  @property
  def checkpoints(self) -> str:
    return self._join("checkpoints")

  @property
  def metrics(self) -> str:
    return self._join("metrics.jsonl")

  @property
  def eval_summary(self) -> str:
    return self._join("eval_summary.json")

  def means(self, step: int) -> str:
    return self._join("prune", f"means_{int(step)}.npz")

  @property
  def circuits(self) -> str:
    return self._join("circuits")

  @property
  def prune_summary(self) -> str:
    return self._join("circuits", "prune_summary.json")

  def circuit_dir(self, task: str) -> str:
    return self._join("circuits", task)

  def circuit(self, task: str) -> str:
    return self._join("circuits", task, "circuit.json")

  @property
  def index(self) -> str:
    return self._join("index.html")

  @property
  def export(self) -> str:
    return self._join("export")

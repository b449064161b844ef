"""The same train step in plain PyTorch, for the CPU comparison of
`benchmarks.step --torch`.

A straightforward eager implementation of what `train.make_train_step` does,
written the way the authors' trainer does it: the model of
`sparse_circuits.model` with AbsTopK at all eight sites through
`torch.topk` + scatter, the bigram table, cross-entropy, gradients
normalised to RMS 1, Adam (eps 0.1), then each sparsified matrix cut to its
k largest magnitudes through `torch.topk` on the flattened magnitudes after
protecting the top 4 of every neuron, then decoupled weight decay. Shapes
and k come from the same config and `sparsity.Plan`. torch is imported here
only (it is optional).

  python -m benchmarks.step --config=configs/tiny.py --torch
"""

import math

import numpy as np

from sparse_circuits import model as model_lib


def _modules():
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  F = torch.nn.functional  # pylint: disable=invalid-name

  def abs_topk(x, k):
    if k >= x.shape[-1]:
      return x
    idx = x.abs().topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))

  class Block(nn.Module):

    def __init__(self, cfg):
      super().__init__()
      D, hd = cfg.d_model, cfg.n_head * cfg.d_head
      self.cfg = cfg
      self.ln_1, self.ln_2 = nn.RMSNorm(D), nn.RMSNorm(D)
      self.c_attn = nn.Linear(D, 3 * hd)
      self.attn_proj = nn.Linear(hd, D)
      self.c_fc = nn.Linear(D, cfg.d_mlp)
      self.mlp_proj = nn.Linear(cfg.d_mlp, D)
      out_std = 0.02 / math.sqrt(2 * cfg.n_layer)
      for lin, std in ((self.c_attn, 0.02), (self.attn_proj, out_std),
                       (self.c_fc, 0.02), (self.mlp_proj, out_std)):
        nn.init.normal_(lin.weight, std=std)
        nn.init.zeros_(lin.bias)

    def site(self, x, name):
      c = self.cfg
      if c.afrac > 0 and name in c.afrac_sites:
        return abs_topk(x, int(c.afrac * x.shape[-1]))
      return x

    def forward(self, x):
      c = self.cfg
      B, L, _ = x.shape
      h = self.site(self.ln_1(x), "attn_in")
      q, k, v = self.c_attn(h).chunk(3, dim=-1)
      q, k, v = (self.site(t, s).view(B, L, c.n_head, c.d_head).transpose(1, 2)
                 for t, s in ((q, "attn_q"), (k, "attn_k"), (v, "attn_v")))
      y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
      y = y.transpose(1, 2).reshape(B, L, c.n_head * c.d_head)
      x = x + self.site(self.attn_proj(y), "attn_out")
      h = self.site(self.ln_2(x), "mlp_in")
      a = self.site(F.gelu(self.c_fc(h)), "mlp_neuron")
      return x + self.site(self.mlp_proj(a), "mlp_out")

  class GPT(nn.Module):

    def __init__(self, cfg):
      super().__init__()
      V, D = cfg.vocab_size, cfg.d_model
      self.wte = nn.Embedding(V, D)
      nn.init.normal_(self.wte.weight, std=0.02)
      self.wpe = nn.Embedding(cfg.block_size, D)
      nn.init.zeros_(self.wpe.weight)
      self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
      self.ln_f = nn.RMSNorm(D)
      self.lm_head = nn.Linear(D, V, bias=False)
      nn.init.normal_(self.lm_head.weight, std=0.02)
      self.final_logits_bias = nn.Parameter(torch.zeros(V))
      self.bigram_table = nn.Parameter(torch.rand(V, V) * 0.02)

    def forward(self, tokens):
      L = tokens.shape[1]
      x = self.wte(tokens) + self.wpe.weight[:L]
      for block in self.h:
        x = block(x)
      logits = self.lm_head(self.ln_f(x)) + self.final_logits_bias
      return logits + F.embedding(tokens, self.bigram_table)

  return torch, GPT


def _torch_param(model, path):
  """Our parameter path (kernels [in, out]) -> (torch tensor, transposed)."""
  parts = path.split("/")
  if parts[0] in ("wte", "wpe"):
    return getattr(model, parts[0]).weight, False
  if parts[0] == "lm_head":
    return model.lm_head.weight, True
  block = model.h[int(parts[0].split("_")[1])]
  name = {("attn", "c_attn"): "c_attn", ("attn", "c_proj"): "attn_proj",
          ("mlp", "c_fc"): "c_fc", ("mlp", "c_proj"): "mlp_proj"}[
              (parts[1], parts[2])]
  return getattr(block, name).weight, True


class TorchStep:
  """`run(n)` takes n train steps on one random batch, as `benchmarks.step` does."""

  def __init__(self, config, plan, seed: int = 0, threads: int | None = None):
    torch, GPT = _modules()  # pylint: disable=invalid-name
    self.torch = torch
    # torch's intra-op threads are process-wide: set on every `run`.
    self.threads = threads or torch.get_num_threads()
    torch.manual_seed(seed)
    cfg = model_lib.ModelConfig.from_config(config.model)
    self.model = GPT(cfg)
    self.params = list(self.model.parameters())
    self.n_params = sum(p.numel() for p in self.params)
    o = config.opt
    self.lr, self.wd = o.lr, o.weight_decay
    self.opt = torch.optim.Adam(self.params, lr=o.lr, betas=(o.b1, o.b2),
                                eps=o.eps)
    # (tensor, k, protect dim in torch layout or None)
    self.sparse = []
    for m in (plan.matrices if plan is not None else ()):
      w, transposed = _torch_param(self.model, m.path)
      dim = None if m.protect_axis is None else (
          1 - m.protect_axis if transposed else m.protect_axis)
      self.sparse.append((w, m.k_final, dim, plan.min_per_neuron))
    self.decayed = [p for p in self.params if p.ndim >= 2 and
                    p is not self.model.bigram_table]
    rng = np.random.default_rng(0)
    batch = rng.integers(0, cfg.vocab_size,
                         (config.train.batch_size, cfg.block_size + 1))
    self.batch = torch.as_tensor(batch, dtype=torch.long)
    self.vocab = cfg.vocab_size

  def step(self):
    torch = self.torch
    x, y = self.batch[:, :-1], self.batch[:, 1:]
    logits = self.model(x)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, self.vocab), y.reshape(-1))
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
      grads = [p.grad for p in self.params]
      rms = torch.sqrt(sum((g * g).sum() for g in grads) / self.n_params)
      for g in grads:
        g.div_(rms + 1e-5)
      self.opt.step()
      for w, k, dim, n_protect in self.sparse:
        score = w.abs()
        if dim is not None:
          top = score.topk(n_protect, dim=dim).indices
          score.scatter_(dim, top, math.inf)
        idx = score.flatten().topk(k, sorted=False).indices
        mask = torch.zeros(w.numel(), dtype=torch.bool)
        mask[idx] = True
        w.mul_(mask.view_as(w))
      for p in self.decayed:
        p.mul_(1 - self.wd * self.lr)
    return loss

  def run(self, n: int) -> float:
    self.torch.set_num_threads(self.threads)
    loss = None
    for _ in range(n):
      loss = self.step()
    return float(loss.detach())


def main():
  """Standalone: tokens/s of the torch step for a config (tiny default)."""
  import sys  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from sparse_circuits import config_lib  # pylint: disable=g-import-not-at-top
  from sparse_circuits import train  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config(sys.argv[1] if len(sys.argv) > 1 else "tiny")
  step = TorchStep(config, train.make_setup(config).plan)
  step.run(2)
  start = time.perf_counter()
  loss = step.run(10)
  dt = (time.perf_counter() - start) / 10
  tokens = config.train.batch_size * config.model.block_size
  print(f"torch {step.torch.__version__}, {step.threads} threads: "
        f"{1e3 * dt:.1f} ms/step, {tokens / dt:,.0f} tokens/s (loss {loss:.3f})")


if __name__ == "__main__":
  main()

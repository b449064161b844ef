"""The one vocabulary of activation sites and circuit nodes.

Site names are the authors' (paper §2, App. A; their released circuits use
them): `{L}.resid_in`, `{L}.attn.act_in`, ... `final_resid`. The model
captures and intervenes at these names, the config validates activation
sparsity against `AFRAC_SITES`, circuits use `NODE_KINDS`, the viewer colours
by kind, and interop maps the authors' `afrac_loctypes` onto `AFRAC_SITES`.
Every list of names in the package is derived from the tables here, and
`NodeIndex` is the one map between the three ways nodes are held: a flat
vector in forward order (what the pruning search trains), one vector per
site, and ids ("1.mlp.post_act:37").

TransformerLens aliases (for readers coming from it): `resid_in` =
`blocks.L.hook_resid_pre`, `resid_mid` = `hook_resid_mid`, `attn.q|k|v` =
`attn.hook_q|k|v` (flattened over heads), `attn.y` = `attn.hook_z`,
`attn.resid_delta` = `hook_attn_out`, `mlp.post_act` = `mlp.hook_post`,
`mlp.resid_delta` = `hook_mlp_out`, `final_resid` = `ln_final.hook_scale`'s
input.
"""

import dataclasses

import numpy as np

# Per-layer sites in forward order (the layer index is prefixed: "0.attn.q").
LAYER_SITES = ("resid_in", "attn.act_in", "attn.q", "attn.k", "attn.v",
               "attn.y", "attn.resid_delta", "resid_mid", "mlp.act_in",
               "mlp.post_act", "mlp.resid_delta")
FINAL_SITE = "final_resid"

# Activation-sparsity (AbsTopK) locations -> the site they act on. The keys
# are the authors' `afrac_loctypes` names (paper App. A.1).
AFRAC_SITES = {
    "attn_in": "attn.act_in",
    "attn_q": "attn.q",
    "attn_k": "attn.k",
    "attn_v": "attn.v",
    "attn_out": "attn.resid_delta",
    "mlp_in": "mlp.act_in",
    "mlp_neuron": "mlp.post_act",
    "mlp_out": "mlp.resid_delta",
}
AFRAC_NAMES = tuple(AFRAC_SITES)

# Circuit node sites (paper §2.2) in forward order -> node kind.
NODE_KINDS = {
    "attn.act_in": "resid_read",
    "attn.q": "q",
    "attn.k": "k",
    "attn.v": "v",
    "attn.resid_delta": "resid_write",
    "mlp.act_in": "resid_read",
    "mlp.post_act": "mlp_neuron",
    "mlp.resid_delta": "resid_write",
}

# What each sublayer reads, in forward order (sublayer 2i is attention i,
# 2i+1 is MLP i): the residual stream before its RMSNorm (where bridges
# splice two models, paper §2.3) and the node site that reads it after.
SUBLAYER_INPUTS = (("resid_in", "attn.act_in"), ("resid_mid", "mlp.act_in"))


# What a pruned node is replaced by (`prune.ablation`): "mean", its mean
# activation over pretraining batches (the paper's, and what a circuit
# written without the field used), or "zero".
MEAN = "mean"
ABLATIONS = (MEAN, "zero")


def ablation_values(means: dict, ablation: str) -> dict:
  """Per site, the value each ablated node takes: its mean, or 0."""
  if ablation not in ABLATIONS:
    raise ValueError(f"ablation: want one of {ABLATIONS}, got {ablation!r}")
  if ablation == "zero":
    return {k: np.zeros_like(v) for k, v in means.items()}
  return dict(means)


def site_names(n_layer: int) -> list[str]:
  """Every activation site of an n_layer model, in forward order."""
  return [f"{i}.{s}" for i in range(n_layer) for s in LAYER_SITES] + [
      FINAL_SITE]


def split(name: str) -> tuple[int | None, str]:
  """"1.mlp.post_act" -> (1, "mlp.post_act"); "final_resid" -> (None, ...)."""
  head, _, rest = name.partition(".")
  if head.isdigit() and rest:
    return int(head), rest
  return None, name


def kind(name: str) -> str | None:
  """The node kind of a site name (with or without its layer), else None."""
  return NODE_KINDS.get(split(name)[1])


def sublayer_sites(n_layer: int) -> list[str]:
  """The residual site each of the 2·n_layer sublayers reads, in order."""
  return [f"{i}.{resid}" for i in range(n_layer)
          for resid, _ in SUBLAYER_INPUTS]


def sublayer_of_read(name: str) -> int:
  """The sublayer whose residual read node `name` is ("1.mlp.act_in" -> 3)."""
  layer, rest = split(name)
  reads = [read for _, read in SUBLAYER_INPUTS]
  if layer is None or rest not in reads:
    raise ValueError(f"{name!r} is not a residual read site; those are "
                     f"'{{i}}.{reads[0]}' and '{{i}}.{reads[1]}'")
  return 2 * layer + reads.index(rest)


# ------------------------------------------------------------------ nodes


@dataclasses.dataclass(frozen=True)
class Site:
  """One node site of a model: a vector of `width` nodes."""
  name: str      # e.g. "1.mlp.post_act"
  layer: int
  kind: str      # a value of NODE_KINDS
  width: int
  order: int     # position in forward order, for residual edges


def node_sites(cfg) -> list[Site]:
  """Every node site of a model (a `model.ModelConfig`) in forward order."""
  hd = cfg.n_head * cfg.d_head
  widths = {"resid_read": cfg.d_model, "resid_write": cfg.d_model, "q": hd,
            "k": hd, "v": hd, "mlp_neuron": cfg.d_mlp}
  out = []
  for layer in range(cfg.n_layer):
    for suffix, kind_ in NODE_KINDS.items():
      out.append(Site(f"{layer}.{suffix}", layer, kind_, widths[kind_],
                      len(out)))
  return out


def node_id(site: str, index: int) -> str:
  """"1.mlp.post_act", 37 -> "1.mlp.post_act:37"."""
  return f"{site}:{index}"


def parse_node_id(node: str) -> tuple[str, int]:
  """"1.mlp.post_act:37" -> ("1.mlp.post_act", 37)."""
  site, _, index = node.rpartition(":")
  if not site or not index.isdigit():
    raise ValueError(f"{node!r} is not a node id (want SITE:INDEX, e.g. "
                     "'1.mlp.post_act:37')")
  return site, int(index)


def node_masks(nodes, widths) -> dict[str, np.ndarray]:
  """{site: bool [width]} with the given node records ({"site", "index"})
  set, for the sites of `widths` ({site: width}). An imported circuit's
  nodes that are not nodes of this model (`final_resid`, and the records
  with a `position_channel`) are left out; any other record outside
  `widths` raises ValueError naming it (a damaged or foreign document)."""
  out = {s: np.zeros(int(w), bool) for s, w in widths.items()}
  for n in nodes:
    if n["site"] == FINAL_SITE or n.get("position_channel") is not None:
      continue
    m = out.get(n["site"])
    if m is None or not 0 <= n["index"] < len(m):
      raise ValueError(f"node {n['site']}:{n['index']} is not a node of "
                       "this model")
    m[n["index"]] = True
  return out


class NodeIndex:
  """The nodes of a model three ways: flat (sites concatenated in forward
  order, the last axis of an array), per site ({site: [..., width]}) and
  by id."""

  def __init__(self, sites):
    self.sites = tuple(sites)
    self.starts = np.cumsum([0] + [s.width for s in self.sites])
    self.n = int(self.starts[-1])
    self._site = {s.name: i for i, s in enumerate(self.sites)}

  def split(self, flat) -> dict:
    """Flat [..., n] -> {site name: [..., width]} (NumPy or JAX arrays)."""
    return {s.name: flat[..., a:b] for s, a, b in
            zip(self.sites, self.starts[:-1], self.starts[1:])}

  def join(self, per_site) -> np.ndarray:
    """{site name: [..., width]} -> flat [..., n] (NumPy)."""
    return np.concatenate([np.asarray(per_site[s.name]) for s in self.sites],
                          axis=-1)

  def ids(self, flat) -> list[str]:
    """The ids of the nonzero entries of a flat [n] vector, in order."""
    return [node_id(name, int(i)) for name, part in self.split(
        np.asarray(flat)).items() for i in np.nonzero(part)[0]]

  def flat(self, ids) -> np.ndarray:
    """A flat [n] boolean vector with the nodes of `ids` set."""
    out = np.zeros(self.n, bool)
    for node in ids:
      site, i = parse_node_id(node)
      if site not in self._site or not 0 <= i < self.sites[
          self._site[site]].width:
        raise ValueError(f"{node!r} is not a node of this model")
      out[self.starts[self._site[site]] + i] = True
    return out

"""The authors' released checkpoint format (method.md §6): import and export.

`--mode=import --config.interop.path=DIR` reads `DIR/beeg_config.json` and
`DIR/final_model.pt` (and the tokenizer files `encoder.json` + `vocab.bpe`,
and our `sparse_circuits.json`, if DIR has them) and writes an ordinary Orbax
checkpoint into WORKDIR/checkpoints/<step>/ whose `meta` holds a config every
other mode (eval, prune, report) accepts. `--mode=export` writes
WORKDIR/export/{beeg_config.json, final_model.pt, sparse_circuits.json}
(+ tokenizer files) from the latest checkpoint: beeg_config.json holds
exactly the authors' GPTConfig fields (GPT_CONFIG_FIELDS), so their
`load_model` accepts it, and the facts of our training run that GPTConfig
has no field for (sparsity, optimizer, steps, the step reached, position
embedding on/off) go to sparse_circuits.json beside it, which our import
reads back.

torch is needed only to read and write `.pt` files; it is imported lazily
(`pip install -e '.[interop]'`). The conversions themselves are pure numpy:
`state_dict_to_params`, `params_to_state_dict`, `beeg_config_to_model` and
`model_to_beeg_config`.

Facts about the authors' code (openai/circuit_sparsity,
circuit_sparsity/inference/gpt.py) this module relies on:

* GPTConfig defaults: block_size 1024, vocab_size 50304, n_layer 12, n_head
  12, d_model 768, d_head None (-> d_model // n_head), d_mlp None
  (-> 4 * d_model; older files call it `n_mlp`), bias True, rms_norm False
  (LayerNorm), activation_type "gelu", residual_activation_type "identity",
  afrac None (off), afrac_loctypes "attn_in,attn_out,mlp_in,mlp_out",
  tied_unembed True, enable_bigram_table False, learnable_bigram_table False,
  d_pos_emb None, flash True, sink False.
* Activation-sparsity site names (`afrac_loctypes`, a comma-separated string
  matched with `loctype in afrac_loctypes.split(",")`, no stripping): the
  eight names are spelled exactly as ours (SITE_MAP below is the identity);
  their two extra sites `resid_post_attn` / `resid_post_mlp` have no
  counterpart here and are refused when enabled; any other entry never
  matches in their code and is ignored (with a warning).
* The sink is `SDPAWithSink`: an always-visible extra slot with zero key and
  zero value whose logit is `attn_imp.sink_logit[h]`; it exists only on their
  flash path (their `load_model` defaults to flash=False, which silently
  drops it — we keep it whenever the state dict has it).
* `final_logits_bias` is a buffer that older files lack (-> zeros); with
  flash=False each block also carries a causal-mask buffer `attn.bias`
  [1, 1, block, block] (harmless, dropped). With a non-learnable bigram
  table `bigram_table` is a (zero) buffer, still in the state dict.
* Their current `load_model` passes the JSON (after renaming `n_mlp` and
  setting `flash` and `grad_checkpointing`) to `GPTConfig(**fields)`, a
  dataclass that refuses any key it does not know: an exported
  beeg_config.json holds exactly the GPTConfig fields. (Earlier revisions
  popped `bigram_table_rank` and `pfrac` without a default, so they need
  those two keys; add `"bigram_table_rank": null, "pfrac": null` by hand for
  such a loader.) Their released files carry such extra keys (`pfrac`,
  `expansion_factor`, `bigram_table_rank`): on import, keys GPTConfig does
  not know are ignored and logged.
"""

import copy
import dataclasses
import json
import os
import re
import shutil
import types
from typing import Any, Mapping

from absl import logging
import numpy as np

from sparse_circuits import checkpoints
from sparse_circuits import config_lib
from sparse_circuits import model as model_lib
from sparse_circuits import reporting
from sparse_circuits import runs
from sparse_circuits import sharding
from sparse_circuits import sites as sites_lib
from sparse_circuits import tokenizer as tokenizer_lib
from sparse_circuits.errors import InteropError, MissingDependencyError

_log = reporting.get(__name__)

CONFIG_FILE, WEIGHTS_FILE = "beeg_config.json", "final_model.pt"
TOKENIZER_FILES = ("encoder.json", "vocab.bpe")
AUTHORS_EOT, AUTHORS_VOCAB = 2047, 2048

# Their afrac_loctypes name -> our ModelConfig.afrac_sites name. Read off the
# `maybe_activation_sparsity(x, "<name>")` calls in their gpt.py: identical.
SITE_MAP = {s: s for s in sites_lib.AFRAC_NAMES}
# Their sites with no counterpart in our model (after each residual add).
UNSUPPORTED_SITES = ("resid_post_attn", "resid_post_mlp")

# The published GPTConfig fields with their defaults (for fields a
# beeg_config.json may omit): the one list of what an export may write.
GPT_DEFAULTS = {
    "block_size": 1024, "vocab_size": 50304, "n_layer": 12, "n_head": 12,
    "d_head": None, "d_model": 768, "dropout": 0.0, "bias": True,
    "ln_bias": True, "rms_norm": False, "residual_activation_type": "identity",
    "activation_type": "gelu", "afrac": None,
    "afrac_loctypes": "attn_in,attn_out,mlp_in,mlp_out", "debug_nans": False,
    "tied_unembed": True, "tokenizer_name": "tinypython_2k",
    "grad_checkpointing": True, "d_mlp": None, "enable_bigram_table": False,
    "learnable_bigram_table": False, "d_pos_emb": None,
    "dropout_cat_pos_emb": False, "sinusoidal_cat_pos_emb": False,
    "enable_sparse_kernels": False, "flash": True, "sink": False,
}
GPT_CONFIG_FIELDS = tuple(GPT_DEFAULTS)
# Our run's facts beside the export, and the config sections they hold.
FACTS_FILE = "sparse_circuits.json"
FACTS_SECTIONS = ("sparsity", "opt")
FACTS_TRAIN = ("num_steps", "batch_size")
# Model fields that say how to run a model, not what it is: an import takes
# them from --config.
RUN_CHOICES = ("compute_dtype", "remat", "topk_impl")
# Fields outside the published GPTConfig that change the network when set to
# anything but this value: refused (they would change the key set or the
# forward, and we cannot reproduce them).
STRUCTURAL_EXTRAS = {"bigram_table_rank": None, "unembed_rank": None,
                     "use_tied_aux_matrix": False, "mup": False,
                     "mup_width_multiplier": None, "scale_invariance": False}

_ATTN_MASK_RE = re.compile(r"^transformer\.h\.\d+\.attn\.bias$")


def require_torch():
  """torch, imported here because it is optional: only `.pt` files need it."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise MissingDependencyError(
        "reading or writing the authors' .pt files (final_model.pt, "
        "viz_data.pt) needs PyTorch, which is an optional dependency: pip "
        "install -e '.[interop]'") from e
  return torch


# ------------------------------------------------------------- configs


def normalize_beeg(beeg: Mapping[str, Any]) -> dict:
  """Their defaults filled in (GPTConfig semantics), `n_mlp` -> `d_mlp`."""
  b = dict(beeg)
  if "n_mlp" in b and b.get("d_mlp") is None:
    b["d_mlp"] = b.pop("n_mlp")
  out = {k: b.get(k, v) for k, v in GPT_DEFAULTS.items()}
  if out["d_head"] is None:
    out["d_head"] = out["d_model"] // out["n_head"]
  if out["d_mlp"] is None:
    out["d_mlp"] = 4 * out["d_model"]
  return out


def _loctypes(value) -> list[str]:
  if value is None:
    return []
  if isinstance(value, str):
    return value.split(",")  # as their code: no stripping
  return [str(v) for v in value]


def beeg_config_to_model(beeg: Mapping[str, Any]) -> dict:
  """Their GPTConfig fields -> our ModelConfig fields (a dict).

  Unknown keys are ignored; missing ones take GPTConfig's defaults. Models we
  cannot run identically (LayerNorm, ReLU, concatenated position embedding,
  low-rank tables, ...) are refused with an InteropError naming the field.
  """
  extra = {k: beeg[k] for k in STRUCTURAL_EXTRAS if k in beeg}
  for k, v in extra.items():
    if v != STRUCTURAL_EXTRAS[k]:
      raise InteropError(f"beeg_config field {k}={v!r} is not supported "
                         f"(only {STRUCTURAL_EXTRAS[k]!r})")
  b = normalize_beeg(beeg)

  def refuse_unless(cond, field, why):
    if not cond:
      raise InteropError(f"beeg_config field {field}={b[field]!r}: {why}")

  refuse_unless(b["rms_norm"], "rms_norm",
                "LayerNorm models are not supported (method.md §1 is RMSNorm); "
                "note GPTConfig's default is rms_norm=False")
  refuse_unless(b["activation_type"] == "gelu", "activation_type",
                "only the exact-erf GELU MLP is supported")
  refuse_unless(b["residual_activation_type"] == "identity",
                "residual_activation_type", "only 'identity' is supported")
  refuse_unless(b["d_pos_emb"] is None, "d_pos_emb",
                "concatenated position embeddings are not supported")
  for f in ("block_size", "vocab_size", "n_layer", "n_head", "d_head",
            "d_model", "d_mlp"):
    refuse_unless(isinstance(b[f], int) and not isinstance(b[f], bool)
                  and b[f] > 0, f, "must be a positive integer")

  sites = _loctypes(b["afrac_loctypes"])
  afrac = b["afrac"]
  if afrac is None:
    afrac, ours = 0.0, sites_lib.AFRAC_NAMES
  else:
    afrac = float(afrac)
    refuse_unless(0.0 < afrac <= 1.0, "afrac",
                  "must be None (off) or in (0, 1]")
    bad = [s for s in sites if s in UNSUPPORTED_SITES]
    if bad:
      raise InteropError(
          f"beeg_config afrac_loctypes enables {bad}, which this model does "
          f"not have (supported: {sorted(SITE_MAP)})")
    ignored = [s for s in sites if s not in SITE_MAP]
    if ignored:
      logging.warning("afrac_loctypes entries %s match no site in the "
                      "authors' code (they compare exact strings) and are "
                      "ignored", ignored)
    ours = tuple(SITE_MAP[s] for s in sites_lib.AFRAC_NAMES if s in sites)
  return dict(
      n_layer=b["n_layer"], d_model=b["d_model"], n_head=b["n_head"],
      d_head=b["d_head"], d_mlp=b["d_mlp"], block_size=b["block_size"],
      vocab_size=b["vocab_size"], afrac=afrac, afrac_sites=tuple(ours),
      sink=bool(b["sink"]), bigram_table=bool(b["enable_bigram_table"]),
      pos_emb=True)


def model_to_beeg_config(model, *,
                         tokenizer_name: str = "tinypython_2k") -> dict:
  """Our ModelConfig (or its fields as a mapping) -> a beeg_config dict
  holding exactly GPT_CONFIG_FIELDS."""
  m = model if isinstance(model, Mapping) else {
      k: getattr(model, k) for k in ("n_layer", "d_model", "n_head", "d_head",
                                      "d_mlp", "block_size", "vocab_size",
                                      "afrac", "afrac_sites", "sink",
                                      "bigram_table")}
  afrac = float(m.get("afrac", 0.0) or 0.0)
  sites = [s for s in sites_lib.AFRAC_NAMES
           if s in tuple(m.get("afrac_sites", sites_lib.AFRAC_NAMES))]
  inv = {v: k for k, v in SITE_MAP.items()}
  beeg = dict(GPT_DEFAULTS)
  beeg.update(
      block_size=int(m["block_size"]), vocab_size=int(m["vocab_size"]),
      n_layer=int(m["n_layer"]), n_head=int(m["n_head"]),
      d_head=int(m["d_head"]), d_model=int(m["d_model"]),
      d_mlp=int(m["d_mlp"]), bias=True, ln_bias=False, rms_norm=True,
      residual_activation_type="identity", activation_type="gelu",
      afrac=afrac if afrac > 0 else None,
      afrac_loctypes=",".join(inv[s] for s in sites), tied_unembed=False,
      tokenizer_name=tokenizer_name, grad_checkpointing=False,
      enable_bigram_table=bool(m.get("bigram_table", True)),
      learnable_bigram_table=bool(m.get("bigram_table", True)),
      flash=True, sink=bool(m.get("sink", False)))
  return beeg


def run_facts(run_cfg, step: int) -> dict:
  """What sparse_circuits.json holds: the step reached, the model section
  and the training facts GPTConfig has no field for."""
  def plain(v):
    return list(v) if isinstance(v, tuple) else v
  facts = {"step": int(step), "seed": run_cfg.get("seed", 0),
           "model": {k: plain(v) for k, v in run_cfg.model.items()},
           "train": {k: run_cfg.train[k] for k in FACTS_TRAIN
                     if k in run_cfg.train}}
  for section in FACTS_SECTIONS:
    if section in run_cfg:
      facts[section] = {k: plain(v) for k, v in run_cfg[section].items()}
  return facts


def _apply_facts(new, facts: Mapping[str, Any], model_fields: dict,
                 where: str) -> list[str]:
  """Puts sparse_circuits.json's facts into the config `new` (in place):
  sparsity, opt and train.{num_steps, batch_size}, and the model fields
  beeg_config.json cannot say (pos_emb). beeg_config.json describes the
  network and wins where both speak. Returns the keys it ignored."""
  ignored = [k for k in facts
             if k not in ("step", "seed", "model", "train", *FACTS_SECTIONS)]

  def put(section, values, prefix):
    for k, v in values.items():
      if k not in section:
        ignored.append(f"{prefix}.{k}")
        continue
      section[k] = tuple(v) if isinstance(section[k], tuple) else v

  with new.unlocked():
    for name in FACTS_SECTIONS:
      if isinstance(facts.get(name), Mapping):
        put(new[name], facts[name], name)
    train = {k: v for k, v in dict(facts.get("train", {})).items()}
    put(new.train, train, "train")
    if "seed" in facts:
      new.seed = facts["seed"]
  model = dict(facts.get("model", {}))
  known = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
  ignored += [f"model.{k}" for k in model if k not in known]
  if "pos_emb" in model:
    model_fields["pos_emb"] = bool(model["pos_emb"])
  for k, v in model.items():
    v = tuple(v) if isinstance(v, list) else v
    if k in model_fields and k != "pos_emb" and model_fields[k] != v:
      _log.warning("%s says model.%s=%r but %s says %r: keeping the "
                   "latter", where, k, v, CONFIG_FILE, model_fields[k])
  return ignored


# ------------------------------------------------------------- weights


def _layout(cfg: model_lib.ModelConfig) -> dict:
  """torch key -> (our param path, shape in torch layout, transpose?)."""
  D, H, Dh, F, V = (cfg.d_model, cfg.n_head, cfg.d_head, cfg.d_mlp,
                    cfg.vocab_size)
  out = {
      "transformer.wte.weight": (("wte", "embedding"), (V, D), False),
      "transformer.wpe.weight": (("wpe", "embedding"), (cfg.block_size, D),
                                 False),
  }
  for i in range(cfg.n_layer):
    t, h = f"transformer.h.{i}.", f"h_{i}"
    out.update({
        t + "ln_1.weight": ((h, "ln_1", "weight"), (D,), False),
        t + "attn.c_attn.weight": ((h, "attn", "c_attn", "kernel"),
                                   (3 * H * Dh, D), True),
        t + "attn.c_attn.bias": ((h, "attn", "c_attn", "bias"),
                                 (3 * H * Dh,), False),
        t + "attn.c_proj.weight": ((h, "attn", "c_proj", "kernel"),
                                   (D, H * Dh), True),
        t + "attn.c_proj.bias": ((h, "attn", "c_proj", "bias"), (D,), False),
    })
    if cfg.sink:
      out[t + "attn.attn_imp.sink_logit"] = ((h, "attn", "sink_logit"), (H,),
                                             False)
    out.update({
        t + "ln_2.weight": ((h, "ln_2", "weight"), (D,), False),
        t + "mlp.c_fc.weight": ((h, "mlp", "c_fc", "kernel"), (F, D), True),
        t + "mlp.c_fc.bias": ((h, "mlp", "c_fc", "bias"), (F,), False),
        t + "mlp.c_proj.weight": ((h, "mlp", "c_proj", "kernel"), (D, F),
                                  True),
        t + "mlp.c_proj.bias": ((h, "mlp", "c_proj", "bias"), (D,), False),
    })
  out.update({
      "transformer.ln_f.weight": (("ln_f", "weight"), (D,), False),
      "lm_head.weight": (("lm_head", "kernel"), (V, D), True),
      "final_logits_bias": (("final_logits_bias",), (V,), False),
  })
  if cfg.bigram_table:
    out["bigram_table"] = (("bigram_table",), (V, V), False)
  return out


def _check_keys(sd: Mapping[str, Any], cfg, where: str) -> None:
  layout = _layout(cfg)
  problems = []
  for key, (_, shape, _) in layout.items():
    if key not in sd:
      if key == "final_logits_bias":
        continue
      if key == "transformer.wpe.weight" and not cfg.pos_emb:
        continue
      problems.append(f"missing key {key!r} (expected shape {shape})")
    elif tuple(np.shape(sd[key])) != shape:
      problems.append(f"key {key!r} has shape {tuple(np.shape(sd[key]))} "
                      f"but the config needs {shape}")
  for key in sd:
    if key not in layout and not _ATTN_MASK_RE.match(key):
      problems.append(f"unexpected key {key!r} (shape "
                      f"{tuple(np.shape(sd[key]))}): not part of this "
                      f"configuration")
  if problems:
    shown = "; ".join(problems[:10])
    more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
    raise InteropError(f"{where} does not match the config: {shown}{more}")


def state_dict_to_params(sd: Mapping[str, np.ndarray],
                         cfg: model_lib.ModelConfig,
                         where: str = "state dict") -> dict:
  """The authors' state dict (numpy, torch layout) -> our nested params.

  Every key and shape is checked first: a missing key, a wrong shape or an
  unexpected key raises InteropError naming it (the causal-mask buffers
  `transformer.h.<i>.attn.bias` are dropped; a missing `final_logits_bias`
  becomes zeros). Linear weights are transposed to our [in, out] kernels.
  Values are cast to float32.
  """
  _check_keys(sd, cfg, where)
  params: dict = {}
  for key, (path, shape, transpose) in _layout(cfg).items():
    if key in sd:
      a = np.asarray(sd[key], dtype=np.float32)
    elif key == "final_logits_bias" or key == "transformer.wpe.weight":
      a = np.zeros(shape, np.float32)
    if transpose:
      a = a.T
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = np.ascontiguousarray(a)
  if not cfg.pos_emb:
    wpe = params.pop("wpe")["embedding"]
    if np.any(wpe):
      raise InteropError(f"{where}: 'transformer.wpe.weight' is nonzero but "
                         "the config has pos_emb=False")
  return params


def params_to_state_dict(params: Mapping[str, Any],
                         cfg: model_lib.ModelConfig) -> dict[str, np.ndarray]:
  """Our nested params -> the authors' state dict (numpy float32, [out, in]).

  A model without position embedding gets a zero `transformer.wpe.weight`,
  which the authors' GPT always has.
  """
  sd = {}
  for key, (path, shape, transpose) in _layout(cfg).items():
    node = params
    try:
      for p in path:
        node = node[p]
    except KeyError:
      if key == "transformer.wpe.weight" and not cfg.pos_emb:
        sd[key] = np.zeros(shape, np.float32)
        continue
      raise InteropError(
          f"params lack {'/'.join(path)} (for {key!r})") from None
    a = np.asarray(node, dtype=np.float32)
    if transpose:
      a = a.T
    if a.shape != shape:
      raise InteropError(f"param {'/'.join(path)} has shape {a.shape} "
                         f"(torch layout); {key!r} needs {shape}")
    sd[key] = np.ascontiguousarray(a)
  return sd


def _adapt_their_options(sd: dict, beeg: dict, where: str) -> dict:
  """Brings a state dict of a tied / bias-free model to the §8 layout."""
  sd = dict(sd)
  if beeg["tied_unembed"]:
    wte, head = sd.get("transformer.wte.weight"), sd.get("lm_head.weight")
    if head is None and wte is not None:
      sd["lm_head.weight"] = wte
    elif wte is None and head is not None:
      sd["transformer.wte.weight"] = head
    elif wte is not None and not np.array_equal(wte, head):
      raise InteropError(f"{where}: beeg_config says tied_unembed=true but "
                         "'transformer.wte.weight' and 'lm_head.weight' "
                         "differ")
  if not beeg["bias"]:
    for i in range(beeg["n_layer"]):
      for lin, width in (("attn.c_attn", 3 * beeg["n_head"] * beeg["d_head"]),
                         ("attn.c_proj", beeg["d_model"]),
                         ("mlp.c_fc", beeg["d_mlp"]),
                         ("mlp.c_proj", beeg["d_model"])):
        key = f"transformer.h.{i}.{lin}.bias"
        if key in sd:
          raise InteropError(f"{where}: unexpected key {key!r}: beeg_config "
                             "says bias=false")
        sd[key] = np.zeros((width,), np.float32)
  return sd


# ------------------------------------------------------------- .pt files


def _unwrap(obj, where):
  """(state dict, step) from a bare state dict or a training checkpoint."""
  torch = require_torch()
  step = 0
  if isinstance(obj, Mapping) and not all(
      isinstance(v, torch.Tensor) for v in obj.values()):
    for k in ("model", "state_dict", "model_state_dict"):
      if isinstance(obj.get(k), Mapping):
        for s in ("step", "iter_num", "global_step"):
          if isinstance(obj.get(s), int):
            step = int(obj[s])
            break
        obj = obj[k]
        break
  if not isinstance(obj, Mapping):
    raise InteropError(f"{where} holds a {type(obj).__name__}, not a state "
                       "dict")
  bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
  if bad:
    raise InteropError(f"{where}: entries {bad[:5]} are not tensors")
  keys = list(obj)
  for prefix in ("_orig_mod.", "module."):  # torch.compile / DDP wrappers
    if keys and all(k.startswith(prefix) for k in keys):
      obj = {k[len(prefix):]: v for k, v in obj.items()}
      keys = list(obj)
  return obj, step


def load_state_dict(path: str) -> tuple[dict[str, np.ndarray], int]:
  """final_model.pt -> ({key: float32 numpy array}, step or 0).

  Loaded with `weights_only=True` only (no pickled code runs).
  """
  torch = require_torch()
  obj = torch.load(path, map_location="cpu", weights_only=True)
  sd, step = _unwrap(obj, path)
  out = {}
  for k, t in sd.items():
    t = t.detach()
    if t.layout != torch.strided:  # sparse kernels store sparse tensors
      t = t.to_dense()
    if t.is_floating_point() and t.dtype != torch.float32:
      t = t.to(torch.float32)
    out[k] = t.numpy()
  return out, step


def save_state_dict(sd: Mapping[str, np.ndarray], path: str) -> None:
  torch = require_torch()
  tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C"))
             for k, v in sd.items()}
  tmp = path + ".tmp"
  torch.save(tensors, tmp)
  os.replace(tmp, path)


# ------------------------------------------------------------- tokenizer


def _check_tokenizer(directory: str):
  try:
    tok = tokenizer_lib.load(directory)
  except (OSError, ValueError, KeyError) as e:
    raise InteropError(f"tokenizer files in {directory} do not load: "
                       f"{e}") from e
  if tok.eot_id != AUTHORS_EOT or tok.vocab_size != AUTHORS_VOCAB:
    raise InteropError(
        f"tokenizer in {directory} has vocab {tok.vocab_size} and "
        f"end-of-text id {tok.eot_id}; the authors' tinypython_2k format has "
        f"vocab {AUTHORS_VOCAB} and end-of-text {AUTHORS_EOT}")
  return tok


def _tokenizer_files(directory: str) -> bool:
  present = [f for f in TOKENIZER_FILES
             if os.path.isfile(os.path.join(directory, f))]
  if present and len(present) != len(TOKENIZER_FILES):
    missing = sorted(set(TOKENIZER_FILES) - set(present))
    raise InteropError(f"{directory} has {present} but not {missing}: the "
                       "tokenizer needs both files")
  return bool(present)


# ------------------------------------------------------------- modes


def _replicated():
  mesh = sharding.make_mesh(types.SimpleNamespace(shape=(-1, 1, 1)))
  return sharding.replicated(mesh)


def import_run(config, workdir: str):
  """`--mode=import`: config.interop.path -> an Orbax checkpoint in workdir.

  The model block of the saved config comes from beeg_config.json (with
  RUN_CHOICES from `config`); sparsity, opt and train.{num_steps,
  batch_size} from sparse_circuits.json when DIR has one; everything else
  from `config`. Returns the saved config.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  src = config.get("interop", {}).get("path", "")
  if not src:
    raise InteropError("--mode=import needs --config.interop.path=DIR (a "
                       f"directory with {CONFIG_FILE} and {WEIGHTS_FILE})")
  src = os.path.abspath(os.path.expanduser(src))
  for f in (CONFIG_FILE, WEIGHTS_FILE):
    if not os.path.isfile(os.path.join(src, f)):
      raise InteropError(f"{src} has no {f}")
  require_torch()  # fail early and clearly without torch
  if checkpoints.latest_step(workdir) is not None:
    raise InteropError(f"{checkpoints.ckpt_dir(workdir)} already holds a "
                       "checkpoint; import into an empty workdir")

  with open(os.path.join(src, CONFIG_FILE)) as f:
    raw = json.load(f)
  if not isinstance(raw, dict):
    raise InteropError(f"{src}/{CONFIG_FILE} is not a JSON object")
  model_fields = beeg_config_to_model(raw)
  beeg = normalize_beeg(raw)
  unknown = sorted(set(raw) - set(GPT_DEFAULTS) - {"n_mlp"})
  if unknown:
    _log.warning("%s: ignoring keys GPTConfig does not know: %s",
                 CONFIG_FILE, unknown)
  facts_path = os.path.join(src, FACTS_FILE)
  facts = None
  if os.path.isfile(facts_path):
    with open(facts_path) as f:
      facts = json.load(f)
    if not isinstance(facts, dict):
      raise InteropError(f"{facts_path} is not a JSON object")

  where = os.path.join(src, WEIGHTS_FILE)
  sd, step = load_state_dict(where)
  if facts is not None and step == 0:
    step = int(facts.get("step", 0))
  if model_fields["sink"] and not beeg["flash"] and not any(
      k.endswith(".attn.attn_imp.sink_logit") for k in sd):
    # Their non-flash attention has no sink at all: such a model has none.
    logging.warning("sink=true with flash=false and no sink logits: the "
                    "authors' model has no sink; importing without one")
    model_fields["sink"] = False
  sd = _adapt_their_options(sd, beeg, where)

  new = copy.deepcopy(config)
  facts_ignored = []
  if facts is not None:
    facts_ignored = _apply_facts(new, facts, model_fields, facts_path)
    if facts_ignored:
      _log.warning("%s: ignoring keys %s", FACTS_FILE, facts_ignored)
  with new.unlocked():
    new.model = ml_collections.ConfigDict(dict(model_fields, **{
        k: config.model[k] for k in RUN_CHOICES if k in config.model}))
    if "interop" not in new:
      new.interop = ml_collections.ConfigDict()
    new.interop.path = src
    new.interop.tokenizer_name = str(beeg["tokenizer_name"])
  cfg = model_lib.ModelConfig.from_config(new.model)
  params = state_dict_to_params(sd, cfg, where)

  if _tokenizer_files(src):
    tok = _check_tokenizer(src)
    if tok.vocab_size != cfg.vocab_size:
      raise InteropError(f"{src}: the tokenizer has {tok.vocab_size} ids but "
                         f"beeg_config vocab_size is {cfg.vocab_size}")
    tok_dir = os.path.join(os.path.abspath(workdir), "tokenizer")
    if jax.process_index() == 0:
      os.makedirs(tok_dir, exist_ok=True)
      for f in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(src, f), os.path.join(tok_dir, f))
    _check_tokenizer(tok_dir)
    with new.unlocked():
      new.data.tokenizer_dir = tok_dir
  try:
    config_lib.validate(new)
  except ValueError as e:
    raise InteropError(f"the imported model does not fit the run config: {e}"
                       " (sparsity.* and train.* come from --config)") from e

  sh = _replicated()
  params = jax.tree.map(lambda a: jax.device_put(a, sh), params)
  with checkpoints.manager(workdir, async_save=False) as mngr:
    # Orbax refuses an empty pytree, so opt_state is a one-leaf marker: an
    # imported model has no optimizer state (fine-tune via train.init_from).
    checkpoints.save(mngr, step, params,
                     {"imported": np.zeros((), np.int32)}, new)
    mngr.wait_until_finished()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "imported_from.json"), "w") as f:
      json.dump({"path": src, "step": step, "beeg_config": raw,
                 "ignored_keys": unknown, "facts": facts,
                 "ignored_facts": facts_ignored}, f, indent=1)
  logging.info("imported %s (step %d) into %s", src, step,
               checkpoints.ckpt_dir(workdir))
  _log.info(f"imported {src} (step {step}): {cfg.n_layer} layers, d_model "
        f"{cfg.d_model}, {cfg.n_head}x{cfg.d_head} heads, d_mlp {cfg.d_mlp}, "
        f"afrac {cfg.afrac or 'off'}, sink {cfg.sink}, bigram table "
        f"{cfg.bigram_table} -> {checkpoints.ckpt_dir(workdir)}")
  return new


def export_run(config, workdir: str) -> str:
  """`--mode=export`: latest checkpoint -> WORKDIR/export/ (authors' format).

  The model comes from the checkpoint's own config (not `config`). Returns
  the export directory.
  """
  import jax  # pylint: disable=g-import-not-at-top
  del config  # the checkpoint's config describes its parameters
  require_torch()
  run = runs.load(workdir)
  run_cfg, cfg, step = run.config, run.cfg, run.step
  sd = params_to_state_dict(jax.device_get(run.params), cfg)

  out = os.path.join(os.path.abspath(workdir), "export")
  tok_src = run_cfg.data.get("tokenizer_dir", "") or os.path.join(
      os.path.abspath(workdir), "data", "tokenizer")
  has_tok = _tokenizer_files(tok_src)
  name = run_cfg.get("interop", {}).get("tokenizer_name", "")
  if not name:
    if has_tok:
      name = f"sparse_circuits_{tokenizer_lib.load(tok_src).sha256[:12]}"
    else:
      name = "sparse_circuits"
  beeg = model_to_beeg_config(cfg, tokenizer_name=name)
  if cfg.d_model % cfg.n_head:
    logging.warning("d_model=%d is not a multiple of n_head=%d: the authors' "
                    "GPTConfig asserts it is and will refuse this model",
                    cfg.d_model, cfg.n_head)
  if jax.process_index() == 0:
    os.makedirs(out, exist_ok=True)
    save_state_dict(sd, os.path.join(out, WEIGHTS_FILE))
    with open(os.path.join(out, CONFIG_FILE), "w") as f:
      json.dump(beeg, f, indent=1)
    with open(os.path.join(out, FACTS_FILE), "w") as f:
      json.dump(run_facts(run_cfg, step), f, indent=1)
    if has_tok:
      for f in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(tok_src, f), os.path.join(out, f))
  _log.info(f"exported step {step} of {workdir} to {out}"
        + (" (with tokenizer)" if has_tok else ""))
  return out

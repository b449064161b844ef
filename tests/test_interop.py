"""Interop with the authors' released format (method.md §6): import and export.

The reference forward below is written from method.md §1 in plain numpy float64
and reads the authors' state dict directly; it shares no code with
sparse_circuits.model or sparse_circuits.interop.
"""

import dataclasses
import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from scipy import special  # pylint: disable=g-import-not-at-top,wrong-import-position

from sparse_circuits import checkpoints  # pylint: disable=wrong-import-position
from sparse_circuits import config_lib  # pylint: disable=wrong-import-position
from sparse_circuits import interop  # pylint: disable=wrong-import-position
from sparse_circuits import model as model_lib  # pylint: disable=wrong-import-position
from sparse_circuits import sites as sites_lib  # pylint: disable=wrong-import-position
from sparse_circuits import tokenizer as tokenizer_lib  # pylint: disable=wrong-import-position

ALL8 = "attn_in,attn_out,mlp_in,mlp_out,mlp_neuron,attn_v,attn_k,attn_q"
# Keys of the authors' released files that their GPTConfig does not know.
NOT_GPTCONFIG = {"bigram_table_rank", "pfrac", "expansion_factor"}


# ----------------------------------------------------------- helpers


def _beeg(**over):
  b = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, d_head=16,
           d_model=32, d_mlp=128, dropout=0.0, bias=True, rms_norm=True,
           residual_activation_type="identity", activation_type="gelu",
           afrac=None, afrac_loctypes=ALL8, tied_unembed=False,
           enable_bigram_table=False, learnable_bigram_table=False,
           d_pos_emb=None, flash=True, sink=False,
           # keys of the released files that GPTConfig does not know
           pfrac=0.0625, expansion_factor=4, bigram_table_rank=None)
  b.update(over)
  return b


def _keys_and_shapes(b):
  """method.md §6, written out independently of sparse_circuits.interop."""
  V, D, H, Dh, F = (b["vocab_size"], b["d_model"], b["n_head"], b["d_head"],
                    b["d_mlp"])
  out = {"transformer.wte.weight": (V, D),
         "transformer.wpe.weight": (b["block_size"], D)}
  for i in range(b["n_layer"]):
    p = f"transformer.h.{i}."
    out.update({
        p + "ln_1.weight": (D,),
        p + "attn.c_attn.weight": (3 * H * Dh, D),
        p + "attn.c_attn.bias": (3 * H * Dh,),
        p + "attn.c_proj.weight": (D, H * Dh), p + "attn.c_proj.bias": (D,),
        p + "ln_2.weight": (D,),
        p + "mlp.c_fc.weight": (F, D), p + "mlp.c_fc.bias": (F,),
        p + "mlp.c_proj.weight": (D, F), p + "mlp.c_proj.bias": (D,)})
    if b["sink"]:
      out[p + "attn.attn_imp.sink_logit"] = (H,)
  out.update({"transformer.ln_f.weight": (D,), "lm_head.weight": (V, D),
              "final_logits_bias": (V,)})
  if b["enable_bigram_table"]:
    out["bigram_table"] = (V, V)
  return out


def _random_state_dict(b, seed):
  """A 'trained-looking' state dict: every parameter matters."""
  rng = np.random.default_rng(seed)
  sd = {}
  for k, shape in _keys_and_shapes(b).items():
    if k.endswith("ln_1.weight") or k.endswith("ln_2.weight") or (
        k == "transformer.ln_f.weight"):
      a = 1.0 + 0.2 * rng.standard_normal(shape)
    elif k.endswith(".bias") or k == "final_logits_bias":
      a = 0.2 * rng.standard_normal(shape)
    elif k.endswith("sink_logit"):
      a = 1.0 + rng.standard_normal(shape)
    elif k == "bigram_table":
      a = rng.uniform(0.0, 1.0, shape)
    elif k.endswith("wte.weight") or k.endswith("wpe.weight"):
      # Small, as trained embeddings are: RMSNorm's eps then matters.
      a = 0.02 * rng.standard_normal(shape)
    else:  # linear weights [out, in]
      a = rng.standard_normal(shape) / np.sqrt(shape[1])
    sd[k] = a.astype(np.float32)
  return sd


def _erf_gelu(x):
  return 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0)))


def reference_logits(sd, b, tokens):
  """method.md §1 forward in float64 from the authors' state dict and config."""
  g = lambda k: np.asarray(sd[k], np.float64)
  V, H, Dh = b["vocab_size"], b["n_head"], b["d_head"]
  eps = float(np.finfo(np.float32).eps)
  sites = (set(b["afrac_loctypes"].split(","))
           if b.get("afrac") is not None else set())

  def rms(x, w):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

  def abstopk(x, site):
    if site not in sites:
      return x
    k = int(b["afrac"] * x.shape[-1])
    idx = np.argsort(-np.abs(x), axis=-1, kind="stable")[..., :k]
    out = np.zeros_like(x)
    np.put_along_axis(out, idx, np.take_along_axis(x, idx, -1), -1)
    return out

  B, L = tokens.shape
  x = g("transformer.wte.weight")[tokens] + g("transformer.wpe.weight")[:L]
  causal = np.tril(np.ones((L, L), bool))
  for i in range(b["n_layer"]):
    p = f"transformer.h.{i}."
    h = abstopk(rms(x, g(p + "ln_1.weight")), "attn_in")
    qkv = h @ g(p + "attn.c_attn.weight").T + g(p + "attn.c_attn.bias")
    q = abstopk(qkv[..., :H * Dh], "attn_q")
    k = abstopk(qkv[..., H * Dh:2 * H * Dh], "attn_k")
    v = abstopk(qkv[..., 2 * H * Dh:], "attn_v")
    q, k, v = (t.reshape(B, L, H, Dh) for t in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(Dh)
    s = np.where(causal, s, -np.inf)
    if b["sink"]:  # zero key (logit = the learned scalar), zero value
      sink = np.broadcast_to(g(p + "attn.attn_imp.sink_logit")[None, :, None,
                                                                None],
                             (B, H, L, 1))
      s = np.concatenate([sink, s], axis=-1)
    s = s - s.max(-1, keepdims=True)
    w = np.exp(s)
    w = w / w.sum(-1, keepdims=True)
    if b["sink"]:
      w = w[..., 1:]
    y = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(B, L, H * Dh)
    o = y @ g(p + "attn.c_proj.weight").T + g(p + "attn.c_proj.bias")
    x = x + abstopk(o, "attn_out")
    h = abstopk(rms(x, g(p + "ln_2.weight")), "mlp_in")
    a = _erf_gelu(h @ g(p + "mlp.c_fc.weight").T + g(p + "mlp.c_fc.bias"))
    a = abstopk(a, "mlp_neuron")
    o = a @ g(p + "mlp.c_proj.weight").T + g(p + "mlp.c_proj.bias")
    x = x + abstopk(o, "mlp_out")
  x = rms(x, g("transformer.ln_f.weight"))
  logits = x @ g("lm_head.weight").T
  logits = logits + (g("final_logits_bias") if "final_logits_bias" in sd
                     else np.zeros(V))
  if b["enable_bigram_table"]:
    logits = logits + g("bigram_table")[tokens]
  return logits


def _config(**model):
  c = config_lib.base_config("tiny")
  c.sparsity.enabled = False  # a training setting; the test models are tiny
  c.data.tokenizer_dir = "unused"  # the test vocabularies are not 2048
  for k, v in model.items():
    c.model[k] = v
  return c


def _write_authors_dir(d, b, sd, extra_sd=None):
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "beeg_config.json"), "w") as f:
    json.dump(b, f)
  tensors = {k: torch.from_numpy(v) for k, v in sd.items()}
  tensors.update(extra_sd or {})
  torch.save(tensors, os.path.join(d, "final_model.pt"))
  return d


def _import(tmp_path, b, sd, name="run", extra_sd=None, config=None):
  src = _write_authors_dir(str(tmp_path / f"{name}_src"), b, sd, extra_sd)
  config = config or _config()
  config.interop.path = src
  work = str(tmp_path / name)
  interop.import_run(config, work)
  return work


def _restore(work):
  run_cfg = checkpoints.load_config(work)
  cfg = model_lib.ModelConfig.from_config(run_cfg.model)
  params, step = checkpoints.restore_params(
      work, model_lib.abstract_params(cfg))
  return cfg, params, step, run_cfg


# ----------------------------------------------------------- forward parity

VARIANTS = {
    # name: (beeg overrides, the override that removes the feature or None)
    "sink": (dict(sink=True), dict(sink=False)),
    "bigram_table": (dict(enable_bigram_table=True,
                          learnable_bigram_table=True),
                     dict(enable_bigram_table=False)),
    "abstopk_all8": (dict(afrac=0.25, afrac_loctypes=ALL8),
                     dict(afrac=None)),
    "dhead_x_nhead_ne_dmodel": (dict(n_head=4, d_head=16, d_mlp=96,
                                     flash=False), None),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_imported_logits_match_reference(tmp_path, variant):
  over, off = VARIANTS[variant]
  b = _beeg(**over)
  sd = _random_state_dict(b, seed=len(variant))
  extra = {}
  if variant == "dhead_x_nhead_ne_dmodel":
    assert b["n_head"] * b["d_head"] != b["d_model"]
    del sd["final_logits_bias"]  # older files lack it: zeros
    extra = {f"transformer.h.{i}.attn.bias":  # flash=False causal masks
             torch.tril(torch.ones(16, 16)).view(1, 1, 16, 16)
             for i in range(b["n_layer"])}
  work = _import(tmp_path, b, sd, extra_sd=extra)
  cfg, params, step, _ = _restore(work)
  assert step == 0

  tokens = np.random.default_rng(1).integers(0, b["vocab_size"], (3, 16))
  ours, _ = model_lib.forward(params, jax.numpy.asarray(tokens), cfg)
  ours = np.asarray(ours, np.float64)
  ref = reference_logits(sd, b, tokens)
  scale = np.max(np.abs(ref))
  assert np.max(np.abs(ours - ref)) <= 1e-5 * scale, (
      np.max(np.abs(ours - ref)) / scale)
  if off is not None:  # the feature really changes the logits
    ref_off = reference_logits(sd, dict(b, **off), tokens)
    assert np.max(np.abs(ref_off - ref)) > 1e-2 * scale


# ----------------------------------------------------------- round trip


def _random_params(cfg, seed):
  """Our params for `cfg` (shapes from the model), all entries random."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda a: rng.standard_normal(a.shape).astype(np.float32),
      model_lib.abstract_params(cfg))


def _authors_load_model_config(beeg):
  """Their load_model's config step: GPTConfig(**json) after renaming n_mlp
  and setting flash and grad_checkpointing; GPTConfig is a dataclass of
  exactly GPT_CONFIG_FIELDS, so any other key raises TypeError."""
  gpt_config = dataclasses.make_dataclass(
      "GPTConfig", [(f, object, dataclasses.field(default=v))
                    for f, v in interop.GPT_DEFAULTS.items()])
  b = dict(beeg)
  if "n_mlp" in b:
    b["d_mlp"] = b.pop("n_mlp")
  b.update(flash=False, grad_checkpointing=False)
  return gpt_config(**b)


@pytest.mark.slow
def test_export_import_round_trips_bit_exactly(tmp_path):
  config = _config(n_layer=2, d_model=32, n_head=4, d_head=16, d_mlp=96,
                   block_size=16, vocab_size=64, afrac=0.25, sink=True,
                   bigram_table=True, pos_emb=False,
                   afrac_sites=("attn_in", "attn_q", "mlp_neuron"))
  # Training facts GPTConfig cannot hold: they travel in sparse_circuits.json.
  config.seed = 7
  config.sparsity.pfrac, config.sparsity.expansion_factor = 0.5, 2.0
  config.sparsity.anneal_end = 0.4
  config.opt.lr, config.opt.b2 = 3e-3, 0.99
  config.train.num_steps, config.train.batch_size = 123, 16
  cfg = model_lib.ModelConfig.from_config(config.model)
  params = _random_params(cfg, 0)
  src = str(tmp_path / "ours")
  with checkpoints.manager(src, async_save=False) as mngr:
    checkpoints.save(mngr, 5, params, {"none": np.zeros((), np.int32)},
                     config)
    mngr.wait_until_finished()

  out = interop.export_run(config, src)
  sd = torch.load(os.path.join(out, "final_model.pt"), map_location="cpu",
                  weights_only=True)
  with open(os.path.join(out, "beeg_config.json")) as f:
    b = json.load(f)
  # The authors' loader accepts it: only GPTConfig's fields, none of ours.
  assert set(b) <= set(interop.GPT_CONFIG_FIELDS)
  assert not NOT_GPTCONFIG & set(interop.GPT_CONFIG_FIELDS)
  assert _authors_load_model_config(b).afrac == 0.25
  with pytest.raises(TypeError, match="pfrac"):
    _authors_load_model_config(dict(b, pfrac=0.5))
  assert b["afrac_loctypes"] == "attn_in,attn_q,mlp_neuron"
  expected = _keys_and_shapes(b)
  assert {k: tuple(v.shape) for k, v in sd.items()} == expected
  assert all(v.dtype == torch.float32 for v in sd.values())
  np.testing.assert_array_equal(  # torch layout [out, in]
      sd["transformer.h.1.attn.c_attn.weight"].numpy(),
      np.asarray(params["h_1"]["attn"]["c_attn"]["kernel"]).T)
  with open(os.path.join(out, "sparse_circuits.json")) as f:
    facts = json.load(f)
  assert facts["step"] == 5 and facts["sparsity"]["pfrac"] == 0.5

  config2 = _config()  # other sparsity, opt and train settings
  config2.interop.path = out
  work = str(tmp_path / "back")
  interop.import_run(config2, work)
  cfg2, params2, step2, run_cfg = _restore(work)
  assert cfg2 == cfg and step2 == 5
  assert run_cfg.seed == 7
  plain = lambda d: json.loads(json.dumps(d.to_dict()))  # tuples -> lists
  for section in ("model", "sparsity", "opt"):
    assert plain(run_cfg[section]) == plain(config[section]), section
  for k in ("num_steps", "batch_size"):
    assert run_cfg.train[k] == config.train[k], k
  assert run_cfg.data.tokenizer_dir == "unused"  # from --config
  flat1 = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  flat2 = dict(jax.tree_util.tree_flatten_with_path(params2)[0])
  assert set(flat1) == set(flat2)
  for k, v in flat1.items():
    a, b2 = np.asarray(v), np.asarray(flat2[k])
    assert a.dtype == b2.dtype and a.shape == b2.shape, k
    assert np.array_equal(a.view(np.uint32), b2.view(np.uint32)), k


def test_import_ignores_unknown_keys_and_lists_them(tmp_path, caplog):
  b = _beeg(some_future_key=[1])
  sd = _random_state_dict(b, 0)
  src = _write_authors_dir(str(tmp_path / "src"), b, sd)
  with open(os.path.join(src, "sparse_circuits.json"), "w") as f:
    json.dump({"step": 9, "sparsity": {"pfrac": 0.5, "new_knob": 1},
               "later": {}}, f)
  config = _config()
  config.interop.path = src
  work = str(tmp_path / "run")
  with caplog.at_level("WARNING"):
    interop.import_run(config, work)
  _, _, step, run_cfg = _restore(work)
  assert step == 9 and run_cfg.sparsity.pfrac == 0.5
  with open(os.path.join(work, "imported_from.json")) as f:
    record = json.load(f)
  assert record["ignored_keys"] == sorted(NOT_GPTCONFIG | {"some_future_key"})
  assert sorted(record["ignored_facts"]) == ["later", "sparsity.new_knob"]
  logged = caplog.text
  assert "some_future_key" in logged and "sparsity.new_knob" in logged


@pytest.mark.parametrize("over", [
    dict(sink=True, bigram_table=False, pos_emb=True),
    dict(sink=False, bigram_table=True, pos_emb=False, n_head=3, d_head=8)])
def test_numpy_conversion_round_trip(over):
  cfg = model_lib.ModelConfig(n_layer=2, d_model=24, n_head=over.pop("n_head",
                                                                    2),
                              d_head=over.pop("d_head", 12), d_mlp=40,
                              block_size=8, vocab_size=32, **over)
  params = _random_params(cfg, 3)
  sd = interop.params_to_state_dict(params, cfg)
  back = interop.state_dict_to_params(sd, cfg)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------- refusals


def test_wrong_shape_is_refused_naming_the_key(tmp_path):
  b = _beeg()
  sd = _random_state_dict(b, 0)
  sd["transformer.h.1.attn.c_attn.weight"] = np.zeros((48, 32), np.float32)
  with pytest.raises(interop.InteropError,
                     match=r"transformer\.h\.1\.attn\.c_attn\.weight.*"
                     r"\(48, 32\).*\(96, 32\)"):
    _import(tmp_path, b, sd)
  assert checkpoints.latest_step(str(tmp_path / "run")) is None


def test_missing_key_is_refused_naming_the_key(tmp_path):
  b = _beeg(sink=True)
  sd = _random_state_dict(b, 0)
  del sd["transformer.h.0.attn.attn_imp.sink_logit"]
  with pytest.raises(interop.InteropError,
                     match=r"missing key 'transformer\.h\.0\.attn\.attn_imp"
                     r"\.sink_logit'"):
    _import(tmp_path, b, sd)
  cfg = model_lib.ModelConfig.from_config(
      interop.beeg_config_to_model(_beeg()))
  sd = _random_state_dict(_beeg(), 0)
  del sd["transformer.h.1.mlp.c_fc.bias"]
  with pytest.raises(interop.InteropError, match=r"mlp\.c_fc\.bias"):
    interop.state_dict_to_params(sd, cfg)


def test_unexpected_key_is_refused(tmp_path):
  b = _beeg()
  sd = _random_state_dict(b, 0)
  sd["bigram_table"] = np.zeros((64, 64), np.float32)  # table not enabled
  with pytest.raises(interop.InteropError,
                     match=r"unexpected key 'bigram_table'"):
    _import(tmp_path, b, sd)


def test_beeg_config_defaults_and_unknown_keys():
  m = interop.beeg_config_to_model(dict(
      n_layer=3, n_head=4, d_model=64, vocab_size=2048, block_size=256,
      rms_norm=True, pfrac=0.01, expansion_factor=4, some_future_key=[1]))
  assert m == dict(n_layer=3, d_model=64, n_head=4, d_head=16, d_mlp=256,
                   block_size=256, vocab_size=2048, afrac=0.0,
                   afrac_sites=sites_lib.AFRAC_NAMES, sink=False,
                   bigram_table=False, pos_emb=True)
  m = interop.beeg_config_to_model(dict(
      n_layer=1, n_head=2, d_model=8, rms_norm=True, afrac=0.5, n_mlp=12))
  assert m["afrac_sites"] == ("attn_in", "attn_out", "mlp_in", "mlp_out")
  assert m["d_mlp"] == 12
  back = interop.beeg_config_to_model(interop.model_to_beeg_config(m))
  assert back == m
  with pytest.raises(interop.InteropError, match="rms_norm"):
    interop.beeg_config_to_model(dict(n_layer=1, n_head=2, d_model=8))
  with pytest.raises(interop.InteropError, match="resid_post_attn"):
    interop.beeg_config_to_model(dict(
        n_layer=1, n_head=2, d_model=8, rms_norm=True, afrac=0.5,
        afrac_loctypes="attn_in,resid_post_attn"))


def test_missing_torch_gives_install_hint(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match=r"pip install -e '\.\[interop\]'"):
    interop.load_state_dict(str(tmp_path / "final_model.pt"))


# ----------------------------------------------------------- tokenizer


def _write_tokenizer(d, n_merges):
  printable = [bytes([c]) for c in range(33, 127)]
  merges = [(a, b) for a in printable for b in printable][:n_merges]
  tokenizer_lib._write(d, merges)  # pylint: disable=protected-access


def test_authors_tokenizer_is_copied_and_checked(tmp_path):
  b = _beeg(vocab_size=2048)
  sd = _random_state_dict(b, 0)
  src = str(tmp_path / "run_src")
  _write_tokenizer(src, 2048 - 1 - 256)
  config = _config()
  config.data.tokenizer_dir = ""
  work = _import(tmp_path, b, sd, config=config)
  _, _, _, run_cfg = _restore(work)
  assert run_cfg.data.tokenizer_dir == os.path.join(work, "tokenizer")
  tok = tokenizer_lib.load(run_cfg.data.tokenizer_dir)
  assert (tok.vocab_size, tok.eot_id) == (2048, 2047)

  bad = str(tmp_path / "bad_src")
  _write_tokenizer(bad, 300)
  with pytest.raises(interop.InteropError, match="2047"):
    _import(tmp_path, b, sd, name="bad", config=_config())


def test_training_checkpoint_tied_and_bias_free(tmp_path):
  """{'model': sd, 'iter_num': n} files, tied_unembed and bias=False."""
  b = _beeg(tied_unembed=True, bias=False)
  sd = {k: v for k, v in _random_state_dict(b, 0).items()
        if not (k.endswith(".bias") or k == "lm_head.weight")}
  src = str(tmp_path / "ckpt_src")
  os.makedirs(src)
  with open(os.path.join(src, "beeg_config.json"), "w") as f:
    json.dump(b, f)
  torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()},
              "iter_num": 123}, os.path.join(src, "final_model.pt"))
  config = _config()
  config.interop.path = src
  interop.import_run(config, str(tmp_path / "ckpt"))
  _, params, step, _ = _restore(str(tmp_path / "ckpt"))
  assert step == 123
  np.testing.assert_array_equal(np.asarray(params["lm_head"]["kernel"]),
                                sd["transformer.wte.weight"].T)
  assert not np.any(np.asarray(params["h_1"]["mlp"]["c_fc"]["bias"]))

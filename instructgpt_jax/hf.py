"""Hugging Face checkpoints in and out: config.json + safetensors <-> `ModelConfig` + params.

Import (`model_config_from_hf`, `load_params`) reads a checkpoint directory as transformers writes
it (`model.safetensors`, or shards listed in `model.safetensors.index.json`) with the
`safetensors` library's numpy reader: torch is never imported at run time. Each of our parameters
is built from its tensor(s) on the host, cast, and put straight onto its sharding
(`jax.device_put` per leaf), so the host holds one leaf at a time, never a second copy of the
whole model.

Families (config.json `model_type`):
  gpt2   -> family "gpt"   (learned positions, LayerNorm, tanh-GELU MLP, biases)
  llama  -> family "llama" (RoPE incl. Llama 3.1 "llama3" and "linear" scaling, GQA, SwiGLU)
  qwen2  -> family "llama" with `qkv_bias` (Qwen2 / Qwen2.5)
  qwen3  -> family "llama" with `qk_norm` and `head_size` (Qwen3 dense models)
Anything the transformer cannot represent (other rope types, sliding windows, biases on the
output projection, other activations, Gemma's offset norms ...) is refused with a ValueError that
names the config.json field.

Export (`export_policy`, `export_reward_model`) writes the inverse: a directory that
`transformers.AutoModelForCausalLM` / `AutoModelForSequenceClassification.from_pretrained` loads.
The reward model becomes `*ForSequenceClassification` with `num_labels=1`. transformers reads the
score at the last token that is not `pad_token_id`; ours is read at the last real token (the
EOS), which is the same token as long as the pad id differs from the EOS id (checked). Its score
head has no bias: GPT-2's is folded exactly into the final LayerNorm's bias; the RMSNorm of the
llama family has no bias, so there the bias is stored as `reward_bias` in config.json and
transformers' score is our reward minus `reward_bias` (differences, and so rankings, are equal).
A reward model with the likelihood term (`rm.likelihood`, not in the paper) keeps its bias in
`reward_bias` in every family (the final norm also feeds the LM head) and writes
`reward_likelihood` and `likelihood_scale`; the same directory then loads as a causal LM too (tied
embeddings), and the reward is the score plus `reward_bias` plus `likelihood_scale` times the
mean (or sum) of the response tokens' log-probs under that causal LM (docs/hf.md).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from instructgpt_jax import hf_tokenizer
from instructgpt_jax import model as model_lib
from instructgpt_jax import tokenizer as tokenizer_lib

HF_PREFIX = "hf:"
SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "qwen2", "qwen3")
# GPT-2's "gelu_new" is the tanh approximation, which is what `nn.gelu` computes by default.
_GPT_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# Prefixes the base model's tensors carry inside *ForCausalLM / *ForSequenceClassification.
_BASE_PREFIXES = ("model.", "transformer.")


def hf_path(spec: str) -> str | None:
  """The directory of an `hf:/path` config value, or None when `spec` is not one."""
  if not spec or not spec.startswith(HF_PREFIX):
    return None
  path = spec[len(HF_PREFIX) :]
  if not os.path.isdir(path):
    raise FileNotFoundError(
      f"Hugging Face checkpoint directory {path!r} (from {spec!r}) does not exist; nothing is "
      "downloaded at run time, so give a local directory with config.json and *.safetensors."
    )
  return path


def read_config(path: str) -> dict[str, Any]:
  """The checkpoint's config.json as a dict."""
  file = os.path.join(path, "config.json")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{file} not found: a Hugging Face checkpoint directory needs one.")
  with open(file) as f:
    return json.load(f)


# --------------------------------------------------------------------------------------
# config.json -> ModelConfig
# --------------------------------------------------------------------------------------


def _refuse(field: str, value: Any, why: str) -> None:
  raise ValueError(f"config.json field {field}={value!r} is not supported: {why}.")


def _rope_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
  """RoPE settings from `rope_parameters` (transformers 5) or `rope_theta`/`rope_scaling`."""
  if hf.get("rope_parameters"):
    params, field = dict(hf["rope_parameters"]), "rope_parameters"
    if "full_attention" in params and isinstance(params["full_attention"], Mapping):
      params, field = dict(params["full_attention"]), "rope_parameters.full_attention"
  else:
    params, field = dict(hf.get("rope_scaling") or {}), "rope_scaling"
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
  rope_type = params.get("rope_type", params.get("type")) or "default"
  out: dict[str, Any] = {"rope_theta": theta}
  if hf.get("partial_rotary_factor", 1.0) != 1.0:
    _refuse("partial_rotary_factor", hf["partial_rotary_factor"], "RoPE rotates whole heads")
  if rope_type == "default":
    return out
  if rope_type == "linear":
    return dict(out, rope_scaling="linear", rope_factor=float(params["factor"]))
  if rope_type == "llama3":
    return dict(
      out,
      rope_scaling="llama3",
      rope_factor=float(params["factor"]),
      rope_low_freq_factor=float(params["low_freq_factor"]),
      rope_high_freq_factor=float(params["high_freq_factor"]),
      rope_original_max_len=int(params["original_max_position_embeddings"]),
    )
  _refuse(f"{field}.rope_type", rope_type, "supported rope types are default, linear and llama3")
  return out  # Unreachable.


def model_config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> model_lib.ModelConfig:
  """Our `ModelConfig` for a checkpoint's config.json; `overrides` set e.g. dtype or head.

  Raises ValueError naming the config.json field of anything the transformer cannot represent.
  """
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    _refuse("model_type", model_type, f"supported model types are {list(SUPPORTED_MODEL_TYPES)}")
  if model_type == "gpt2":
    act = hf.get("activation_function", "gelu_new")
    if act not in _GPT_ACTIVATIONS:
      _refuse("activation_function", act, f"the gpt family computes {_GPT_ACTIVATIONS[0]}")
    for field, ok in (
      ("add_cross_attention", False),
      ("scale_attn_by_inverse_layer_idx", False),
      ("scale_attn_weights", True),
    ):
      if hf.get(field, ok) != ok:
        _refuse(field, hf[field], f"only {field}={ok} is implemented")
    d = int(hf["n_embd"])
    fields: dict[str, Any] = dict(
      family="gpt",
      vocab_size=int(hf["vocab_size"]),
      num_layers=int(hf["n_layer"]),
      d_model=d,
      num_heads=int(hf["n_head"]),
      d_ff=int(hf.get("n_inner") or 4 * d),
      max_len=int(hf["n_positions"]),
      norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )
  else:
    act = hf.get("hidden_act", "silu")
    if act != "silu":
      _refuse("hidden_act", act, "the llama family's MLP is SwiGLU (silu)")
    if hf.get("mlp_bias"):
      _refuse("mlp_bias", hf["mlp_bias"], "the llama family's MLP has no biases")
    if hf.get("attention_bias") and model_type != "qwen2":
      # Llama's attention_bias also puts a bias on o_proj, which the llama family lacks.
      _refuse("attention_bias", hf["attention_bias"], "biases on o_proj are not implemented")
    if hf.get("use_sliding_window"):
      _refuse("use_sliding_window", hf["use_sliding_window"], "attention is always full")
    layer_types = set(hf.get("layer_types") or ["full_attention"])
    if layer_types != {"full_attention"}:
      _refuse("layer_types", sorted(layer_types), "only full_attention layers are implemented")
    d, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = int(hf.get("head_dim") or d // heads)
    fields = dict(
      family="llama",
      vocab_size=int(hf["vocab_size"]),
      num_layers=int(hf["num_hidden_layers"]),
      d_model=d,
      num_heads=heads,
      num_kv_heads=int(hf.get("num_key_value_heads") or heads),
      head_size=0 if head_dim * heads == d else head_dim,
      d_ff=int(hf["intermediate_size"]),
      max_len=int(hf.get("max_position_embeddings", 2048)),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      qkv_bias=model_type == "qwen2",
      qk_norm=model_type == "qwen3",
      **_rope_fields(hf),
    )
    if head_dim % 2:
      _refuse("head_dim", head_dim, "RoPE needs an even head dimension")
  return model_lib.ModelConfig(**dict(fields, **overrides))


def model_fields(path: str) -> dict[str, Any]:
  """The `config.model` entries that describe the checkpoint at `path` (for a stage's config)."""
  cfg = model_config_from_hf(read_config(path))
  keys = (
    "family vocab_size num_layers d_model num_heads num_kv_heads head_size d_ff max_len norm_eps "
    "tie_embeddings qkv_bias qk_norm rope_theta rope_scaling rope_factor rope_low_freq_factor "
    "rope_high_freq_factor rope_original_max_len"
  ).split()
  return {k: getattr(cfg, k) for k in keys}


# --------------------------------------------------------------------------------------
# Reading safetensors (numpy, lazily, one tensor at a time)
# --------------------------------------------------------------------------------------


class SafetensorsReader:
  """Named tensors of a checkpoint directory, read one at a time as numpy arrays.

  Names are normalised by dropping the base-model prefix ("model." / "transformer."), so
  `*ForCausalLM`, `*ForSequenceClassification` and bare base models read alike.
  """

  def __init__(self, path: str):
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel

    self._open = lambda file: safe_open(file, framework="np")
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      files = {name: os.path.join(path, file) for name, file in weight_map.items()}
    elif os.path.isfile(single):
      with self._open(single) as f:
        files = {name: single for name in f.keys()}
    else:
      raise FileNotFoundError(
        f"No model.safetensors or model.safetensors.index.json in {path} (PyTorch .bin "
        "checkpoints are not read: convert them with transformers' save_pretrained)."
      )
    self.path = path
    self._files: dict[str, tuple[str, str]] = {}
    for name, file in files.items():
      short = next((name[len(p) :] for p in _BASE_PREFIXES if name.startswith(p)), name)
      self._files[short] = (file, name)
    self._handles: dict[str, Any] = {}

  def __contains__(self, name: str) -> bool:
    return name in self._files

  def names(self) -> list[str]:
    return sorted(self._files)

  def get(self, name: str) -> np.ndarray:
    if name not in self._files:
      raise KeyError(f"Tensor {name!r} is not in the checkpoint {self.path}.")
    file, full = self._files[name]
    if file not in self._handles:
      self._handles[file] = self._open(file).__enter__()
    return self._handles[file].get_tensor(full)


# --------------------------------------------------------------------------------------
# Parameter mapping: our leaf <- HF tensor(s)
# --------------------------------------------------------------------------------------

Leaf = tuple[str, ...]


def _layer_leaves(cfg: model_lib.ModelConfig) -> dict[Leaf, Callable[[Callable, str], np.ndarray]]:
  """Our per-layer leaves, each with a function (get, "prefix.") -> numpy array from HF tensors.

  `get(name)` reads one HF tensor; the prefix is "h.{i}." (gpt2) or "layers.{i}." (llama).
  HF Linear weights are [out, in]; GPT-2's Conv1D weights are already [in, out].
  """
  H, K, D, d = cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.d_model
  if cfg.family == "gpt":

    def qkv(part: int, bias: bool):
      def f(get, p):
        if bias:
          return get(p + "attn.c_attn.bias")[part * d : (part + 1) * d].reshape(H, D)
        return get(p + "attn.c_attn.weight")[:, part * d : (part + 1) * d].reshape(d, H, D)

      return f

    leaves = {
      ("ln_attn", "LayerNorm_0", "scale"): lambda g, p: g(p + "ln_1.weight"),
      ("ln_attn", "LayerNorm_0", "bias"): lambda g, p: g(p + "ln_1.bias"),
      ("ln_mlp", "LayerNorm_0", "scale"): lambda g, p: g(p + "ln_2.weight"),
      ("ln_mlp", "LayerNorm_0", "bias"): lambda g, p: g(p + "ln_2.bias"),
      ("attn", "out", "kernel"): lambda g, p: g(p + "attn.c_proj.weight").reshape(H, D, d),
      ("attn", "out", "bias"): lambda g, p: g(p + "attn.c_proj.bias"),
      ("mlp", "wi", "kernel"): lambda g, p: g(p + "mlp.c_fc.weight"),
      ("mlp", "wi", "bias"): lambda g, p: g(p + "mlp.c_fc.bias"),
      ("mlp", "wo", "kernel"): lambda g, p: g(p + "mlp.c_proj.weight"),
      ("mlp", "wo", "bias"): lambda g, p: g(p + "mlp.c_proj.bias"),
    }
    for part, name in enumerate(("query", "key", "value")):
      leaves[("attn", name, "kernel")] = qkv(part, False)
      leaves[("attn", name, "bias")] = qkv(part, True)
    return leaves

  def proj(hf_name: str, heads: int):
    return lambda g, p: g(p + f"self_attn.{hf_name}.weight").T.reshape(d, heads, D)

  def proj_bias(hf_name: str, heads: int):
    return lambda g, p: g(p + f"self_attn.{hf_name}.bias").reshape(heads, D)

  leaves = {
    ("ln_attn", "RMSNorm_0", "scale"): lambda g, p: g(p + "input_layernorm.weight"),
    ("ln_mlp", "RMSNorm_0", "scale"): lambda g, p: g(p + "post_attention_layernorm.weight"),
    ("attn", "query", "kernel"): proj("q_proj", H),
    ("attn", "key", "kernel"): proj("k_proj", K),
    ("attn", "value", "kernel"): proj("v_proj", K),
    ("attn", "out", "kernel"): lambda g, p: g(p + "self_attn.o_proj.weight").T.reshape(H, D, d),
    ("mlp", "wi_gate", "kernel"): lambda g, p: g(p + "mlp.gate_proj.weight").T,
    ("mlp", "wi_up", "kernel"): lambda g, p: g(p + "mlp.up_proj.weight").T,
    ("mlp", "wo", "kernel"): lambda g, p: g(p + "mlp.down_proj.weight").T,
  }
  if cfg.qkv_bias:
    leaves[("attn", "query", "bias")] = proj_bias("q_proj", H)
    leaves[("attn", "key", "bias")] = proj_bias("k_proj", K)
    leaves[("attn", "value", "bias")] = proj_bias("v_proj", K)
  if cfg.qk_norm:
    leaves[("attn", "query_norm", "scale")] = lambda g, p: g(p + "self_attn.q_norm.weight")
    leaves[("attn", "key_norm", "scale")] = lambda g, p: g(p + "self_attn.k_norm.weight")
  return leaves


def _leaf_sources(
  cfg: model_lib.ModelConfig, reader: SafetensorsReader, hf_cfg: Mapping[str, Any]
) -> Iterator[tuple[Leaf, Callable[[], np.ndarray]]]:
  """Every leaf of our params tree with a thunk that builds it from the checkpoint (`hf_cfg`,
  its config.json, holds the reward model's scalars)."""
  gpt = cfg.family == "gpt"
  get = reader.get
  layer_prefix = "h.{}." if gpt else "layers.{}."
  for leaf, build in _layer_leaves(cfg).items():
    if cfg.scan_layers:
      yield (
        ("layers", *leaf),
        lambda b=build: np.stack(
          [b(get, layer_prefix.format(i)) for i in range(cfg.num_layers)], axis=0
        ),
      )
    else:
      for i in range(cfg.num_layers):
        yield (f"layer_{i}", *leaf), lambda b=build, i=i: b(get, layer_prefix.format(i))
  yield ("token_embed", "embedding"), lambda: get("wte.weight" if gpt else "embed_tokens.weight")
  if gpt:
    yield ("pos_embed",), lambda: get("wpe.weight")
    yield ("ln_final", "LayerNorm_0", "scale"), lambda: get("ln_f.weight")
    yield ("ln_final", "LayerNorm_0", "bias"), lambda: get("ln_f.bias")
  else:
    yield ("ln_final", "RMSNorm_0", "scale"), lambda: get("norm.weight")
  if cfg.head == "lm":
    if not cfg.tie_embeddings:
      yield ("unembed", "kernel"), lambda: get("lm_head.weight").T
  else:
    if "score.weight" not in reader:
      raise ValueError(
        f"{reader.path} has no score head (score.weight): import it with head='lm' and give the "
        "reward model a fresh scalar head (rm.trunk_with_scalar_head), or import a checkpoint "
        "written by export_reward_model."
      )
    yield ("scalar_head", "kernel"), lambda: get("score.weight").T
    bias = float(hf_cfg.get("reward_bias", 0.0))
    yield ("scalar_head", "bias"), lambda: np.full((1,), bias, np.float32)
    if cfg.reward_likelihood != "none":
      if hf_cfg.get("reward_likelihood") != cfg.reward_likelihood:
        raise ValueError(
          f"{reader.path} holds no reward_likelihood={cfg.reward_likelihood!r} reward model "
          f"(its config.json says {hf_cfg.get('reward_likelihood')!r}); set rm.likelihood to match."
        )
      scale = float(hf_cfg["likelihood_scale"])
      yield ("likelihood_scale",), lambda: np.asarray(scale, np.float32)


def _tree_set(tree: dict, leaf: Leaf, value: Any) -> None:
  for key in leaf[:-1]:
    tree = tree.setdefault(key, {})
  tree[leaf[-1]] = value


def load_params(
  path: str, cfg: model_lib.ModelConfig, shardings: Any | None = None
) -> dict[str, Any]:
  """The checkpoint's weights as our (unboxed) params tree for `cfg`.

  `cfg` must describe the checkpoint (from `model_config_from_hf`; dtype, remat, scan_layers and
  head may differ). With `shardings` (the tree of `train_state.param_shardings`) every leaf is
  put on its sharding as soon as it is built; without, leaves are host numpy arrays. Every
  leaf's shape is checked against the model before it is placed.
  """
  hf_cfg = read_config(path)
  expected = model_config_from_hf(hf_cfg)
  for field in ("family", "vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads"):
    if getattr(expected, field) != getattr(cfg, field):
      raise ValueError(
        f"model.{field}={getattr(cfg, field)!r} but the checkpoint {path} has "
        f"{getattr(expected, field)!r}; take config.model from hf.model_fields({path!r})."
      )
  abstract = jax.eval_shape(
    lambda r: nn.meta.unbox(model_lib.boxed_params(cfg, r)), jax.random.key(0)
  )
  flat_abstract = {
    tuple(k.key for k in path_): leaf
    for path_, leaf in jax.tree_util.tree_leaves_with_path(abstract)
  }
  flat_shardings = (
    {
      tuple(k.key for k in path_): s
      for path_, s in jax.tree_util.tree_leaves_with_path(
        shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
      )
    }
    if shardings is not None
    else {}
  )
  reader = SafetensorsReader(path)
  params: dict[str, Any] = {}
  dtype = np.dtype(cfg.param_dtype)
  for leaf, build in _leaf_sources(cfg, reader, hf_cfg):
    if leaf not in flat_abstract:
      raise ValueError(f"Imported parameter {'/'.join(leaf)} does not exist in the model {cfg}.")
    value = np.asarray(build()).astype(dtype, copy=False)
    want = flat_abstract.pop(leaf).shape
    if value.shape != tuple(want):
      raise ValueError(
        f"Imported parameter {'/'.join(leaf)} has shape {value.shape}, the model expects "
        f"{tuple(want)}: the checkpoint {path} does not match its config.json."
      )
    if leaf in flat_shardings:
      value = jax.device_put(value, flat_shardings[leaf])
    _tree_set(params, leaf, value)
  if flat_abstract:
    missing = ["/".join(k) for k in flat_abstract]
    raise ValueError(f"The import left parameters unset: {missing} (a bug in hf.py's mapping).")
  return params


# --------------------------------------------------------------------------------------
# Export: our params -> an HF directory
# --------------------------------------------------------------------------------------


def hf_config_for(
  cfg: model_lib.ModelConfig,
  *,
  bos_id: int | None,
  eos_id: int | None,
  pad_id: int | None,
  sequence_classification: bool = False,
) -> dict[str, Any]:
  """config.json for our model: gpt2, llama, qwen2 (qkv_bias) or qwen3 (qk_norm)."""
  ids = dict(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
  if cfg.family == "gpt":
    if cfg.kv_heads != cfg.num_heads or cfg.head_size:
      raise ValueError(
        "GPT-2 has neither grouped-query attention nor a free head size: model.num_kv_heads="
        f"{cfg.num_kv_heads}, model.head_size={cfg.head_size} cannot be exported as gpt2."
      )
    model_type, arch = "gpt2", "GPT2"
    out: dict[str, Any] = dict(
      vocab_size=cfg.vocab_size,
      n_positions=cfg.max_len,
      n_embd=cfg.d_model,
      n_layer=cfg.num_layers,
      n_head=cfg.num_heads,
      n_inner=cfg.d_ff,
      activation_function="gelu_new",
      layer_norm_epsilon=cfg.norm_eps,
      resid_pdrop=0.0,
      embd_pdrop=0.0,
      attn_pdrop=0.0,
      summary_first_dropout=0.0,
    )
  else:
    if cfg.qk_norm and cfg.qkv_bias:
      raise ValueError("No transformers family has both qk_norm and qkv_bias; cannot export.")
    if cfg.qkv_bias and cfg.head_size:
      raise ValueError(
        f"Qwen2 derives head_dim from hidden_size; model.head_size={cfg.head_size} cannot be "
        "exported with qkv_bias."
      )
    model_type, arch = (
      ("qwen3", "Qwen3")
      if cfg.qk_norm
      else ("qwen2", "Qwen2")
      if cfg.qkv_bias
      else ("llama", "Llama")
    )
    rope: dict[str, Any] | None = None
    if cfg.rope_scaling == "linear":
      rope = dict(rope_type="linear", factor=cfg.rope_factor)
    elif cfg.rope_scaling == "llama3":
      if model_type != "llama":
        raise ValueError(f"rope_scaling 'llama3' is a Llama feature; {model_type} lacks it.")
      rope = dict(
        rope_type="llama3",
        factor=cfg.rope_factor,
        low_freq_factor=cfg.rope_low_freq_factor,
        high_freq_factor=cfg.rope_high_freq_factor,
        original_max_position_embeddings=cfg.rope_original_max_len,
      )
    out = dict(
      vocab_size=cfg.vocab_size,
      hidden_size=cfg.d_model,
      intermediate_size=cfg.d_ff,
      num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.kv_heads,
      head_dim=cfg.head_dim,
      hidden_act="silu",
      max_position_embeddings=cfg.max_len,
      rms_norm_eps=cfg.norm_eps,
      # The pre-transformers-5 spelling, which transformers 5 still reads.
      rope_theta=cfg.rope_theta,
      rope_scaling=rope,
      # Qwen2 always has q/k/v biases (its config has no switch); say so for other readers.
      attention_bias=bool(cfg.qkv_bias),
      mlp_bias=False,
      attention_dropout=0.0,
    )
  suffix = "ForSequenceClassification" if sequence_classification else "ForCausalLM"
  if model_type == "gpt2" and not sequence_classification:
    suffix = "LMHeadModel"
  out.update(
    model_type=model_type,
    architectures=[arch + suffix],
    # A reward model with the likelihood term also loads as a causal LM, through the tied head.
    tie_word_embeddings=bool(cfg.tie_embeddings)
    and (not sequence_classification or cfg.reward_likelihood != "none"),
    torch_dtype="float32",
    **ids,
  )
  if sequence_classification:
    out.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
  return out


def _host(x: Any) -> np.ndarray:
  return np.asarray(jax.device_get(x), np.float32)


def hf_state_dict(params: Mapping[str, Any], cfg: model_lib.ModelConfig) -> dict[str, np.ndarray]:
  """Our params as transformers' tensor names and layouts (float32 numpy)."""
  H, K, D, d = cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.d_model
  gpt = cfg.family == "gpt"
  base = "transformer." if gpt else "model."
  out: dict[str, np.ndarray] = {}

  def layer(i: int) -> Mapping[str, Any]:
    if cfg.scan_layers:
      return jax.tree.map(lambda x: x[i], params["layers"])
    return params[f"layer_{i}"]

  for i in range(cfg.num_layers):
    p = layer(i)
    a, m = p["attn"], p["mlp"]
    if gpt:
      pre = f"{base}h.{i}."
      for ours, theirs in (("ln_attn", "ln_1"), ("ln_mlp", "ln_2")):
        out[pre + theirs + ".weight"] = _host(p[ours]["LayerNorm_0"]["scale"])
        out[pre + theirs + ".bias"] = _host(p[ours]["LayerNorm_0"]["bias"])
      out[pre + "attn.c_attn.weight"] = np.concatenate(
        [_host(a[n]["kernel"]).reshape(d, H * D) for n in ("query", "key", "value")], axis=1
      )
      out[pre + "attn.c_attn.bias"] = np.concatenate(
        [_host(a[n]["bias"]).reshape(H * D) for n in ("query", "key", "value")]
      )
      out[pre + "attn.c_proj.weight"] = _host(a["out"]["kernel"]).reshape(H * D, d)
      out[pre + "attn.c_proj.bias"] = _host(a["out"]["bias"])
      for ours, theirs in (("wi", "c_fc"), ("wo", "c_proj")):
        out[pre + f"mlp.{theirs}.weight"] = _host(m[ours]["kernel"])
        out[pre + f"mlp.{theirs}.bias"] = _host(m[ours]["bias"])
    else:
      pre = f"{base}layers.{i}."
      out[pre + "input_layernorm.weight"] = _host(p["ln_attn"]["RMSNorm_0"]["scale"])
      out[pre + "post_attention_layernorm.weight"] = _host(p["ln_mlp"]["RMSNorm_0"]["scale"])
      for ours, theirs, heads in (("query", "q", H), ("key", "k", K), ("value", "v", K)):
        out[pre + f"self_attn.{theirs}_proj.weight"] = (
          _host(a[ours]["kernel"]).reshape(d, heads * D).T
        )
        if cfg.qkv_bias:
          out[pre + f"self_attn.{theirs}_proj.bias"] = _host(a[ours]["bias"]).reshape(-1)
      out[pre + "self_attn.o_proj.weight"] = _host(a["out"]["kernel"]).reshape(H * D, d).T
      if cfg.qk_norm:
        out[pre + "self_attn.q_norm.weight"] = _host(a["query_norm"]["scale"])
        out[pre + "self_attn.k_norm.weight"] = _host(a["key_norm"]["scale"])
      for ours, theirs in (("wi_gate", "gate_proj"), ("wi_up", "up_proj"), ("wo", "down_proj")):
        out[pre + f"mlp.{theirs}.weight"] = _host(m[ours]["kernel"]).T
  if gpt:
    out[base + "wte.weight"] = _host(params["token_embed"]["embedding"])
    out[base + "wpe.weight"] = _host(params["pos_embed"])
    out[base + "ln_f.weight"] = _host(params["ln_final"]["LayerNorm_0"]["scale"])
    out[base + "ln_f.bias"] = _host(params["ln_final"]["LayerNorm_0"]["bias"])
  else:
    out[base + "embed_tokens.weight"] = _host(params["token_embed"]["embedding"])
    out[base + "norm.weight"] = _host(params["ln_final"]["RMSNorm_0"]["scale"])
  if cfg.head == "lm" and not cfg.tie_embeddings:
    out["lm_head.weight"] = _host(params["unembed"]["kernel"]).T
  # Contiguous copies: safetensors writes raw buffers.
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _write(directory: str, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> str:
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  return directory


def export_policy(
  params: Mapping[str, Any],
  cfg: model_lib.ModelConfig,
  directory: str,
  *,
  bos_id: int | None = None,
  eos_id: int | None = None,
  pad_id: int | None = None,
) -> str:
  """Writes an LM (`cfg.head == "lm"`) as `*ForCausalLM` (GPT2LMHeadModel): config.json and
  model.safetensors (float32). Gathers each parameter to this host. Returns `directory`."""
  if cfg.head != "lm":
    raise ValueError("export_policy needs an LM head; use export_reward_model for head='scalar'.")
  config = hf_config_for(cfg, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
  return _write(directory, config, hf_state_dict(params, cfg))


def export_reward_model(
  params: Mapping[str, Any],
  cfg: model_lib.ModelConfig,
  directory: str,
  *,
  pad_id: int,
  eos_id: int,
  bos_id: int | None = None,
) -> str:
  """Writes a reward model (`cfg.head == "scalar"`) as `*ForSequenceClassification`, one label.

  transformers scores the last token that is not `pad_id`; ours is the last real token, the EOS
  that ends every response, so `pad_id` must differ from `eos_id`. Feed it sequences right-padded
  with `pad_id` (as the pipeline lays them out). The head's bias and the likelihood term: see
  the module docstring.
  """
  if cfg.head != "scalar":
    raise ValueError("export_reward_model needs head='scalar'; use export_policy for an LM.")
  if pad_id == eos_id:
    raise ValueError(
      f"pad_id == eos_id == {pad_id}: transformers would read the score one token before the "
      "EOS. Pass any other id as pad_id (padding is never attended to)."
    )
  config = hf_config_for(
    cfg, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, sequence_classification=True
  )
  tensors = hf_state_dict(params, cfg)
  w = _host(params["scalar_head"]["kernel"])[:, 0]  # [d]
  bias = float(_host(params["scalar_head"]["bias"])[0])
  tensors["score.weight"] = np.ascontiguousarray(w[None, :])
  if cfg.reward_likelihood != "none":
    config.update(
      reward_bias=bias,
      reward_likelihood=cfg.reward_likelihood,
      likelihood_scale=float(_host(params["likelihood_scale"])),
    )
  elif cfg.family == "gpt":
    # The final LayerNorm feeds only the score: w . (ln + delta) = w . ln + bias for
    # delta = bias * w / |w|^2, so the bias folds exactly into ln_f's bias.
    tensors["transformer.ln_f.bias"] = tensors["transformer.ln_f.bias"] + bias * w / float(w @ w)
  else:
    config["reward_bias"] = bias
  return _write(directory, config, tensors)


# Tokenizer files copied beside an export of a run that uses a checkpoint's tokenizer.
TOKENIZER_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
)


def export_stage(ws: Any, stage: str, directory: str) -> str:
  """Exports a finished stage of workspace `ws` to `directory`, with its tokenizer's files.

  `stage` is a stage directory name: "sft", "rm", "ppo/ppo", "ppo/ppo_ptx" (or "pretrain",
  "rm_base", "rm/member_<i>"). The RM is written as a sequence-classification model of its own
  shape (`rm.model`), every other stage as a causal LM (`ws.models.for_stage`). A checkpoint's
  tokenizer files are copied; the project's own sentencepiece model is written as tokenizer.json
  and tokenizer_config.json (`hf_tokenizer.write_sentencepiece_as_hf`), with tokenizer.model
  beside them for sentencepiece users.
  """
  cfg = ws.models.for_stage(stage)
  params = ws.load_params(stage, cfg)
  tok = ws.tokenizer()
  ids = dict(bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id)
  if cfg.head == "lm":
    export_policy(params, cfg, directory, **ids)
  else:
    export_reward_model(params, cfg, directory, **ids)
  if isinstance(tok, tokenizer_lib.Tokenizer):
    hf_tokenizer.write_sentencepiece_as_hf(tok.path, directory, model_max_length=cfg.max_len)
    shutil.copy(tok.path, os.path.join(directory, "tokenizer.model"))
    return directory
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(tok.path, name)):
      shutil.copy(os.path.join(tok.path, name), os.path.join(directory, name))
  return directory

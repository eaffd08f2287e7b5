"""The transformer: one decoder-only Flax linen module for every model in the pipeline.

Policy, reference, reward and value models are all `Transformer`; only `config.head` differs:
"lm" ends in the unembedding (logits over the vocabulary), "scalar" in one number per position
(the reward model reads it at the last response token, the value function at every token).

Two families share the code: "gpt" (learned positions, LayerNorm, GELU MLP, biases; GPT-2/3) and
"llama" (RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases; with the options `qkv_bias`,
`qk_norm`, `head_size` and `rope_scaling` it also holds Qwen2/2.5, Qwen3 and Llama 3.1, see hf.py). Every parameter and the main
activations carry logical axis names; `sharding.py` maps them onto the mesh.

Sequences use one layout everywhere: left-padded prompt then right-padded response, a `mask` that
is 1 on real tokens, and positions `cumsum(mask) - 1` (so a prompt starts at position 0 whatever
its padding). Decoding uses an explicit KV cache that is passed in and returned, so generation is
a pure function: one `{"k", "v"}: [batch, kv_heads, cache_len, head_dim]` per layer (a tuple),
or, with scanned layers, one such dict stacked over a leading [layers] axis.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from instructgpt_jax import sharding

Array = jax.Array
# One layer's {"k", "v"} (or, with scanned layers, all layers' stacked); a model's cache is a
# tuple of per-layer dicts or one stacked dict (`init_cache`).
Cache = dict[str, Array] | tuple[dict[str, Array], ...]

FAMILIES = ("gpt", "llama")
HEADS = ("lm", "scalar")
# A reward model's optional likelihood term (not in the paper; objectives.sequence_rewards): the
# response's mean or summed token log-prob under the RM's own tied LM head, times a learned scale.
REWARD_LIKELIHOODS = ("none", "mean", "sum")
ROPE_SCALINGS = ("none", "linear", "llama3")
REMAT_POLICIES = ("none", "full", "dots")

# Added to masked attention scores; finite so that a fully masked row (a padding query) gives a
# harmless uniform average instead of NaN.
_MASK_VALUE = -1e30


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static shape and numerics of a `Transformer` (mirrors `config.model` in configs/)."""

  vocab_size: int = 1024
  num_layers: int = 4
  d_model: int = 256
  num_heads: int = 4
  num_kv_heads: int = 0  # 0 means num_heads (multi-head attention); fewer gives GQA.
  d_ff: int = 1024
  max_len: int = 256
  family: str = "gpt"
  tie_embeddings: bool = True
  dropout: float = 0.0  # Residual and embedding dropout (the paper's "residual dropout").
  dtype: str = "float32"  # Compute dtype ("bfloat16" on TPU/GPU).
  param_dtype: str = "float32"
  remat: str = "none"
  scan_layers: bool = False
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  head: str = "lm"
  # With head "scalar": adds the learned `likelihood_scale` of REWARD_LIKELIHOODS' term.
  reward_likelihood: str = "none"
  # Options that imported checkpoints need (hf.py); the defaults keep the original model.
  head_size: int = 0  # 0 means d_model // num_heads; Qwen3 uses wider heads than that.
  qkv_bias: bool = False  # Biases on query/key/value in the llama family (Qwen2).
  qk_norm: bool = False  # RMSNorm of each query/key head before RoPE (Qwen3).
  # RoPE frequency scaling: "linear" divides every frequency by rope_factor; "llama3" is Llama
  # 3.1's: low frequencies divided, high ones kept, a smooth ramp between (see rope_frequencies).
  rope_scaling: str = "none"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192

  def __post_init__(self):
    _check_choice("family", self.family, FAMILIES)
    _check_choice("head", self.head, HEADS)
    _check_choice("remat", self.remat, REMAT_POLICIES)
    _check_choice("rope_scaling", self.rope_scaling, ROPE_SCALINGS)
    _check_choice("reward_likelihood", self.reward_likelihood, REWARD_LIKELIHOODS)
    if self.reward_likelihood != "none" and not self.tie_embeddings:
      raise ValueError(
        f"reward_likelihood={self.reward_likelihood!r} reads the LM head through the tied "
        "embedding, which this model does not have (tie_embeddings=False)."
      )
    if not self.head_size and self.d_model % self.num_heads:
      raise ValueError(
        f"model.d_model={self.d_model} is not divisible by model.num_heads={self.num_heads}."
      )
    if self.num_heads % self.kv_heads:
      raise ValueError(
        f"model.num_heads={self.num_heads} is not divisible by model.num_kv_heads={self.kv_heads}."
      )

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def head_dim(self) -> int:
    return self.head_size or self.d_model // self.num_heads

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """Builds from `config.model`; an unknown key is an error that lists the valid ones."""
    d = dict(d, **overrides)
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - valid)
    if unknown:
      raise ValueError(f"Unknown model config key(s) {unknown}; valid keys: {sorted(valid)}.")
    return cls(**d)

  def replace(self, **kw: Any) -> ModelConfig:
    return dataclasses.replace(self, **kw)

  def num_params(self, include_embeddings: bool = True) -> int:
    """Parameter count of the trunk and head, computed from the shapes (no allocation)."""
    d, f, L = self.d_model, self.d_ff, self.num_layers
    q, kv = self.num_heads * self.head_dim, self.kv_heads * self.head_dim
    attn = d * q * 2 + d * kv * 2
    if self.family == "gpt":
      attn += q + d + 2 * kv  # biases
    elif self.qkv_bias:
      attn += q + 2 * kv
    if self.qk_norm:
      attn += 2 * self.head_dim
    if self.family == "gpt":
      mlp = 2 * d * f + f + d
      norms = 2 * 2 * d
    else:
      mlp = 3 * d * f
      norms = 2 * d
    total = L * (attn + mlp + norms) + (2 * d if self.family == "gpt" else d)
    if include_embeddings:
      total += self.vocab_size * d
      if self.family == "gpt":
        total += self.max_len * d
    if self.head == "lm" and not self.tie_embeddings:
      total += d * self.vocab_size
    if self.head == "scalar":
      total += d + 1 + (self.reward_likelihood != "none")
    return total


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"model.{name}={value!r} is not one of {list(choices)}.")


def positions_from_mask(mask: Array) -> Array:
  """Positions `[batch, seq]` for left/right padded rows: real tokens count from 0."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


# The KV cache's logical axes; `config.sharding.rules` places them (batch over the data axes,
# heads over "tensor", as the activations they hold).
CACHE_AXES = (
  "layers",
  "activation_batch",
  "activation_kv_heads",
  "activation_length",
  "activation_kv",
)


def init_cache(config: ModelConfig, batch: int, length: int) -> Cache:
  """An empty KV cache, placed by the active logical rules (`sharding.use_rules`; unplaced
  without them): per layer `{"k", "v"}: [batch, kv_heads, length, head_dim]`, a tuple of them,
  or with `scan_layers` one dict stacked to `[layers, batch, kv_heads, length, head_dim]`.

  Separate per-layer buffers let each decoding step update and read a layer's keys in place;
  slices of one stacked buffer were copied out for the attention matmuls at every token.
  """
  shape = (batch, config.kv_heads, length, config.head_dim)
  dtype = jnp.dtype(config.dtype)
  if config.scan_layers:
    zeros = jnp.zeros((config.num_layers, *shape), dtype)
    zeros = sharding.constrain(zeros, CACHE_AXES)
    return {"k": zeros, "v": zeros}
  zeros = sharding.constrain(jnp.zeros(shape, dtype), CACHE_AXES[1:])
  return tuple({"k": zeros, "v": zeros} for _ in range(config.num_layers))


def _dense_init(scale: float = 1.0):
  return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


def _logical(init, names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(init, names)


def rope_frequencies(config: ModelConfig) -> np.ndarray:
  """RoPE inverse frequencies `[head_dim // 2]` (float32), with the configured scaling.

  "llama3" follows Llama 3.1 (and transformers' `_compute_llama3_parameters`): wavelengths
  longer than `original_max_len / low_freq_factor` are stretched by `rope_factor`, those shorter
  than `original_max_len / high_freq_factor` are kept, and the band between is interpolated.
  """
  half = config.head_dim // 2
  freqs = config.rope_theta ** (-np.arange(half, dtype=np.float64) / half)
  if config.rope_scaling == "linear":
    freqs = freqs / config.rope_factor
  elif config.rope_scaling == "llama3":
    factor, old_len = config.rope_factor, config.rope_original_max_len
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    wavelen = 2 * np.pi / freqs
    scaled = np.where(wavelen > old_len / low, freqs / factor, freqs)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    freqs = np.where(medium, smoothed, scaled)
  return freqs.astype(np.float32)


def _apply_rope(x: Array, positions: Array, freqs: np.ndarray) -> Array:
  """Rotary embedding on `x: [batch, seq, heads, head_dim]` at `positions: [batch, seq]`."""
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(freqs)  # [B, T, half]
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Norm(nn.Module):
  """LayerNorm (gpt) or RMSNorm (llama), computed in fp32."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    kw = dict(
      epsilon=cfg.norm_eps,
      dtype=jnp.float32,
      param_dtype=jnp.dtype(cfg.param_dtype),
      scale_init=_logical(nn.initializers.ones, ("norm",)),
    )
    if cfg.family == "gpt":
      norm = nn.LayerNorm(bias_init=_logical(nn.initializers.zeros, ("norm",)), **kw)
    else:
      norm = nn.RMSNorm(**kw)
    return norm(x).astype(jnp.dtype(cfg.dtype))


def _head_norm(cfg: ModelConfig, name: str) -> nn.Module:
  """RMSNorm over each head's `head_dim` features (Qwen3's q_norm/k_norm), in fp32."""
  return nn.RMSNorm(
    epsilon=cfg.norm_eps,
    dtype=jnp.float32,
    param_dtype=jnp.dtype(cfg.param_dtype),
    scale_init=_logical(nn.initializers.ones, ("kv",)),
    name=name,
  )


# Query block of the causal attention without a cache (training, scoring); 0 turns blocking off.
ATTENTION_QUERY_BLOCK = 128


def _causal_block(seq: int) -> int:
  """Query block size for a causal pass over `seq` positions (0: one block, no skipping)."""
  block = ATTENTION_QUERY_BLOCK
  return block if block and seq >= 2 * block else 0


def _attention_core(q: Array, k: Array, v: Array, bias: Array, kv: str, kv_heads: int) -> Array:
  """softmax(q k^T + bias) v for q: [batch, seq, heads, head_dim] (already scaled).

  k, v: [batch, keys, kv_heads, head_dim] ("bshd") or [batch, kv_heads, keys, head_dim]
  ("bhsd"); bias: [batch, seq, keys] fp32, shared by all heads. Returns [batch, seq, heads,
  head_dim].
  """
  B, T, H, D = q.shape
  if kv_heads == H:  # Multi-head attention: 4-D einsums (no size-1 group axis) are faster.
    scores = jnp.einsum(f"bthd,{kv}->bhts", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores + bias[:, None], axis=-1).astype(v.dtype)
    return jnp.einsum(f"bhts,{kv}->bthd", probs, v)
  # Grouped-query attention: G = H / K query heads share each key/value head.
  qg = q.reshape(B, T, kv_heads, H // kv_heads, D)
  kvg = kv.replace("h", "k")
  scores = jnp.einsum(f"btkgd,{kvg}->bkgts", qg, k, preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(scores + bias[:, None, None], axis=-1).astype(v.dtype)
  return jnp.einsum(f"bkgts,{kvg}->btkgd", probs, v).reshape(B, T, H, D)


class Attention(nn.Module):
  """Causal self-attention with grouped-query heads and an optional KV cache."""

  config: ModelConfig

  @nn.compact
  def __call__(
    self,
    x: Array,
    positions: Array,
    key_mask: Array,
    cache: Cache | None,
    cache_index: Array,
  ) -> tuple[Array, Cache | None]:
    """x: [batch, seq, embed]; key_mask: [batch, keys] (keys = seq, or the cache length).

    `cache` is this layer's `{"k", "v"}: [batch, kv_heads, len, head_dim]`; the new keys and
    values are written at `cache_index` (in place: the buffers are carried by the decode loop).
    """
    cfg = self.config
    H, K, D = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    use_bias = cfg.family == "gpt"
    dense = functools.partial(
      nn.DenseGeneral,
      use_bias=use_bias or cfg.qkv_bias,
      dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype),
    )
    q = dense(
      (H, D),
      kernel_init=_logical(_dense_init(), ("embed", "heads", "kv")),
      bias_init=_logical(nn.initializers.zeros, ("heads", "kv")),
      name="query",
    )(x)
    k = dense(
      (K, D),
      kernel_init=_logical(_dense_init(), ("embed", "kv_heads", "kv")),
      bias_init=_logical(nn.initializers.zeros, ("kv_heads", "kv")),
      name="key",
    )(x)
    v = dense(
      (K, D),
      kernel_init=_logical(_dense_init(), ("embed", "kv_heads", "kv")),
      bias_init=_logical(nn.initializers.zeros, ("kv_heads", "kv")),
      name="value",
    )(x)
    if cfg.qk_norm:
      q = _head_norm(cfg, "query_norm")(q).astype(q.dtype)
      k = _head_norm(cfg, "key_norm")(k).astype(k.dtype)
    if cfg.family == "llama":
      freqs = rope_frequencies(cfg)
      q = _apply_rope(q, positions, freqs)
      k = _apply_rope(k, positions, freqs)
    q = sharding.constrain(
      q, ("activation_batch", "activation_length", "activation_heads", "activation_kv")
    )

    B, T = x.shape[:2]
    if cache is not None:
      # The cache is head-major ([batch, kv_heads, len, head_dim] per layer): the layout the
      # attention matmuls read without first copying the whole cache into it at every step.
      k = k.transpose(0, 2, 1, 3).astype(cache["k"].dtype)
      v = v.transpose(0, 2, 1, 3).astype(cache["v"].dtype)
      start = (0, 0, cache_index, 0)
      cache = {
        "k": jax.lax.dynamic_update_slice(cache["k"], k, start),
        "v": jax.lax.dynamic_update_slice(cache["v"], v, start),
      }
      k, v = cache["k"], cache["v"]
      S = k.shape[2]
      kv = "bhsd"
    else:
      S = k.shape[1]
      kv = "bshd"
    # Without a cache the keys are `x` itself: query t sees keys 0..t (cache_index is unused).
    q_idx = jnp.arange(T) + (cache_index if cache is not None else 0)
    allowed = (jnp.arange(S)[None, :] <= q_idx[:, None])[None] & key_mask[:, None, :].astype(bool)
    # One additive [B, T, S] bias shared by all heads: cheaper on XLA:CPU than a select per head.
    bias = jnp.where(allowed, 0.0, _MASK_VALUE).astype(jnp.float32)
    q = q * (D**-0.5)
    block = _causal_block(T) if cache is None else 0
    if block:
      # Causal blocks: query block [i, i + block) needs only keys [0, i + block); the keys after
      # it are masked for every query in it, so their scores and softmax terms are skipped
      # (exactly: their weights are exp(-1e30 - max) = 0 in fp32).
      out = jnp.concatenate(
        [
          _attention_core(
            q[:, i : i + block],
            k[:, : i + block],
            v[:, : i + block],
            bias[:, i : i + block, : i + block],
            kv,
            K,
          )
          for i in range(0, T, block)
        ],
        axis=1,
      )
    else:
      out = _attention_core(q, k, v, bias, kv, K)

    out = nn.DenseGeneral(
      cfg.d_model,
      axis=(-2, -1),
      use_bias=use_bias,
      dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype),
      kernel_init=_logical(_dense_init(1.0 / cfg.num_layers), ("heads", "kv", "embed")),
      bias_init=_logical(nn.initializers.zeros, ("embed",)),
      name="out",
    )(out)
    return out, cache


class Mlp(nn.Module):
  """GELU MLP (gpt) or SwiGLU (llama)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    use_bias = cfg.family == "gpt"
    dense = functools.partial(
      nn.Dense,
      use_bias=use_bias,
      dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype),
      bias_init=_logical(nn.initializers.zeros, ("mlp",)),
    )
    up = _logical(_dense_init(), ("embed", "mlp"))
    if cfg.family == "gpt":
      h = nn.gelu(dense(cfg.d_ff, kernel_init=up, name="wi")(x))
    else:
      h = nn.silu(dense(cfg.d_ff, kernel_init=up, name="wi_gate")(x)) * dense(
        cfg.d_ff, kernel_init=up, name="wi_up"
      )(x)
    h = sharding.constrain(h, ("activation_batch", "activation_length", "activation_mlp"))
    return nn.Dense(
      cfg.d_model,
      use_bias=use_bias,
      dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype),
      kernel_init=_logical(_dense_init(1.0 / cfg.num_layers), ("mlp", "embed")),
      bias_init=_logical(nn.initializers.zeros, ("embed",)),
      name="wo",
    )(h)


class Block(nn.Module):
  """Pre-norm residual block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x)))."""

  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(
    self,
    x: Array,
    cache: Cache | None,
    positions: Array,
    key_mask: Array,
    cache_index: Array,
  ) -> tuple[Array, Cache | None]:
    cfg = self.config
    drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
    h, cache = Attention(cfg, name="attn")(
      Norm(cfg, name="ln_attn")(x), positions, key_mask, cache, cache_index
    )
    x = x + drop(h)
    x = x + drop(Mlp(cfg, name="mlp")(Norm(cfg, name="ln_mlp")(x)))
    x = sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    return x, cache


def _block_class(cfg: ModelConfig) -> type[nn.Module]:
  if cfg.remat == "none":
    return Block
  policy = None if cfg.remat == "full" else jax.checkpoint_policies.checkpoint_dots
  # prevent_cse is only needed outside scan (scan already stops CSE across iterations).
  return nn.remat(Block, policy=policy, prevent_cse=not cfg.scan_layers)


class Transformer(nn.Module):
  """Decoder-only transformer with an LM head or a scalar head (`config.head`)."""

  config: ModelConfig

  def __call__(
    self,
    tokens: Array,
    mask: Array,
    *,
    positions: Array | None = None,
    deterministic: bool = True,
    head_span: tuple[int, int] | None = None,
  ) -> Array:
    """The head's output: logits [batch, seq, vocab] (fp32) for head "lm", values [batch, seq]
    (fp32) for "scalar".

    Args:
      tokens: [batch, seq] token ids.
      mask: [batch, seq] key validity (1 = a real token that later positions may attend to).
      positions: [batch, seq]; defaults to `positions_from_mask(mask)`.
      deterministic: False turns dropout on (needs a "dropout" rng).
      head_span: (start, length), static: the head (and final norm) only on positions
        [start, start + length), so the output has `length` positions. The LM loss needs no
        logits for the last position, PPO only those of the response: the unembedding is the
        largest matmul of a small model.
    """
    return self._run(tokens, mask, positions, None, 0, deterministic, head_span, head=True)

  def hidden(
    self,
    tokens: Array,
    mask: Array,
    *,
    positions: Array | None = None,
    deterministic: bool = True,
    head_span: tuple[int, int] | None = None,
  ) -> Array:
    """The final hidden states [batch, seq, embed] (after the final norm), arguments as
    `__call__`'s: for losses that fuse the unembedding with the log-softmax
    (`losses.head_lm_loss`, `losses.head_token_log_probs`; see `unembedding`) and for the
    reward's scalar head read at one position."""
    return self._run(tokens, mask, positions, None, 0, deterministic, head_span, head=False)

  def decode_step(
    self, tokens: Array, mask: Array, positions: Array, cache: Cache, cache_index: Array | int
  ) -> tuple[Array, Cache]:
    """Runs `tokens` [batch, new] at `positions` [batch, new] against the KV cache (from
    `init_cache`), writing their keys and values at `cache_index`; `mask` [batch, cache_len] is
    the validity of every cache slot. Returns the hidden states [batch, new, embed] and the new
    cache (the sampler applies the head to the positions it needs)."""
    return self._run(tokens, mask, positions, cache, cache_index, True, None, head=False)

  @nn.compact
  def _run(
    self,
    tokens: Array,
    mask: Array,
    positions: Array | None,
    cache: Cache | None,
    cache_index: Array | int,
    deterministic: bool,
    head_span: tuple[int, int] | None,
    head: bool,
  ):
    """The one implementation behind the public methods (one compact method holds every
    parameter): the trunk, then the head when `head`; with a cache, also the new cache."""
    cfg = self.config
    if positions is None:
      if cache is not None:
        raise ValueError("positions are required when decoding with a cache.")
      positions = positions_from_mask(mask)
    cache_index = jnp.asarray(cache_index, jnp.int32)
    length = mask.shape[1]  # Sequence length, or the cache length when decoding.
    if cfg.family == "gpt" and length > cfg.max_len:
      # Learned positions past the table would silently read NaN (jnp.take fills).
      raise ValueError(f"Sequence length {length} exceeds model.max_len={cfg.max_len}.")

    embed = nn.Embed(
      cfg.vocab_size,
      cfg.d_model,
      dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype),
      embedding_init=_logical(nn.initializers.normal(0.02), ("vocab", "embed")),
      name="token_embed",
    )
    x = embed(tokens)
    if cfg.family == "gpt":
      pos_table = self.param(
        "pos_embed",
        _logical(nn.initializers.normal(0.01), ("pos", "embed")),
        (cfg.max_len, cfg.d_model),
        jnp.dtype(cfg.param_dtype),
      )
      x = x + jnp.take(pos_table, positions, axis=0).astype(x.dtype)
    x = nn.Dropout(cfg.dropout, deterministic=deterministic)(x)
    x = sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))

    block_cls = _block_class(cfg)
    if cfg.scan_layers:
      scanned = nn.scan(
        block_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )
      x, cache = scanned(cfg, deterministic, name="layers")(x, cache, positions, mask, cache_index)
    else:
      layer_caches = []
      for i in range(cfg.num_layers):
        x, layer_cache = block_cls(cfg, deterministic, name=f"layer_{i}")(
          x, None if cache is None else cache[i], positions, mask, cache_index
        )
        layer_caches.append(layer_cache)
      cache = None if cache is None else tuple(layer_caches)
    if head_span is not None:
      x = jax.lax.slice_in_dim(x, head_span[0], head_span[0] + head_span[1], axis=1)
    hidden = Norm(cfg, name="ln_final")(x)

    if not head:
      # The head's parameters are still created at init (they are looked up by name).
      if self.is_initializing():
        self._head(embed, hidden)
      return hidden if cache is None else (hidden, cache)
    return self._head(embed, hidden)  # No cache here: decode_step returns hidden states.

  def _head(self, embed: nn.Embed, hidden: Array) -> Array:
    """LM logits [batch, seq, vocab] (fp32) or scalar values [batch, seq] (fp32)."""
    cfg = self.config
    if cfg.head == "lm":
      if cfg.tie_embeddings:
        out = embed.attend(hidden)
      else:
        out = nn.Dense(
          cfg.vocab_size,
          use_bias=False,
          dtype=jnp.dtype(cfg.dtype),
          param_dtype=jnp.dtype(cfg.param_dtype),
          kernel_init=_logical(_dense_init(), ("embed", "vocab")),
          name="unembed",
        )(hidden)
      out = sharding.constrain(
        out.astype(jnp.float32), ("activation_batch", "activation_length", "activation_vocab")
      )
    else:
      # N(0, 1/sqrt(d+1)) with zero bias, as in the OpenAI reward models (docs/rlhf-notes.md §5).
      out = nn.Dense(
        1,
        dtype=jnp.float32,
        param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=_logical(
          nn.initializers.normal((cfg.d_model + 1) ** -0.5), ("embed", "scalar")
        ),
        bias_init=_logical(nn.initializers.zeros, ("scalar",)),
        name="scalar_head",
      )(hidden.astype(jnp.float32))[..., 0]
      if cfg.reward_likelihood != "none":
        # Read only by objectives.sequence_rewards, which needs the response's span; the
        # reward model's stage sets its starting value (rm.init_state).
        self.param("likelihood_scale", _logical(nn.initializers.zeros, ()), (), jnp.float32)
    return out


def boxed_params(config: ModelConfig, rng: Array) -> Any:
  """Freshly initialised parameters, still wrapped in their logical-axis boxes."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  return Transformer(config).init(rng, tokens, jnp.ones_like(tokens))["params"]


def unembedding(params: Mapping[str, Any]) -> Array:
  """The LM head's matrix `[vocab, embed]` in an LM's params (tied or not), for the fused losses.

  `Transformer(...).hidden(...)` followed by `losses.head_lm_loss(hidden,
  unembedding(params), ...)` gives `lm_loss` of the logits without forming them all at once.
  """
  if "unembed" in params:
    return jnp.asarray(params["unembed"]["kernel"]).T
  return jnp.asarray(params["token_embed"]["embedding"])

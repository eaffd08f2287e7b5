"""LoRA (Hu et al. 2021, not in the paper): a policy stage trains low-rank adapters on a frozen
base instead of every weight.

An adapted kernel W (any DenseGeneral shape, e.g. query [embed, heads, kv]) is used as

    W + (alpha / rank) * (A @ B),    A: [*in_dims, rank],  B: [rank, *out_dims],  B = 0 at init,

so at initialisation the model is exactly its base. The adapters are a parameter tree of their
own that mirrors the base's nesting, holding `{"lora_a", "lora_b"}` in place of each adapted
kernel; `merge` folds them into a copy of the base, the tree every model function takes. So the
model code is unchanged, an imported Hugging Face model is adapted like our own, and the
reference of PPO and DPO is the base itself (adapters off): the weights are stored once (a step
forms each adapted kernel's merged copy as a temporary, as it does its activations). Gradients
are taken with respect to the adapters only, so the optimizer holds state for them alone; the
backward pass still forms each adapted kernel's full gradient once, to reduce it to A's and B's. The adapters carry logical axis names derived from their kernel's, so the mesh's rules
shard them as they shard the kernel (`lora_rank` is never sharded).

A kernel's input dimensions are its leading ones up to the model axis "embed": the query, key,
value and MLP-input kernels read `embed`, the attention output and MLP output kernels write it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from instructgpt_jax import model as model_lib
from instructgpt_jax import settings

RANK_AXIS = "lora_rank"
# Every linear layer of a block, as QLoRA found best (attention only is the LoRA paper's choice).
ALL_LINEAR = ("query", "key", "value", "out", "wi", "wi_gate", "wi_up", "wo")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """`rank` 0 turns LoRA off; `targets` name the modules whose kernel is adapted."""

  rank: int = 0
  alpha: float = 16.0
  targets: tuple[str, ...] = ALL_LINEAR

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  @classmethod
  def from_config(cls, section: ml_collections.ConfigDict, stage: str) -> LoraConfig:
    """From a stage's `lora` section (configs/common.py `lora`); `stage` names it in errors."""
    cfg = cls(int(section.rank), float(section.alpha), tuple(section.targets))
    if cfg.rank < 0:
      raise settings.SettingError(f"{stage}.lora.rank={cfg.rank} must be >= 0 (0 turns LoRA off).")
    unknown = sorted(set(cfg.targets) - set(ALL_LINEAR))
    if cfg.enabled and (unknown or not cfg.targets):
      raise settings.SettingError(
        f"{stage}.lora.targets={list(cfg.targets)}: unknown or empty; valid: {list(ALL_LINEAR)}."
      )
    return cfg


OFF = LoraConfig()  # Every weight trains.


def _split(names: tuple[str | None, ...]) -> tuple[int, int]:
  """(leading batch axes, input axes) of a kernel from its logical names: a scanned model's
  kernels lead with "layers"; the input axes run up to and including "embed" when it comes first,
  else every axis but the last (the output "embed")."""
  lead = 1 if names and names[0] == "layers" else 0
  rest = names[lead:]
  if "embed" not in rest:
    raise ValueError(f"A LoRA target kernel needs an 'embed' axis; got axes {names}.")
  return lead, 1 if rest[0] == "embed" else len(rest) - 1


def _target_paths(boxed: Any, cfg: LoraConfig) -> dict[tuple[str, ...], nn.LogicallyPartitioned]:
  """Flattened path -> boxed kernel of every adapted kernel in a boxed parameter tree."""
  flat = traverse_util.flatten_dict(boxed, is_leaf=lambda _, x: isinstance(x, nn.Partitioned))
  found = {
    path: leaf
    for path, leaf in flat.items()
    if path[-1] == "kernel" and len(path) >= 2 and path[-2] in cfg.targets
  }
  if not found:
    raise ValueError(f"No kernel of the model matches lora.targets={list(cfg.targets)}.")
  return found


def boxed_adapters(model_cfg: model_lib.ModelConfig, cfg: LoraConfig, rng: jax.Array) -> Any:
  """Fresh adapters for `model_cfg`'s target kernels, in logical-axis boxes (as
  `model.boxed_params`): A ~ truncated normal with variance 1 / fan-in, B = 0."""
  boxed = jax.eval_shape(lambda r: model_lib.boxed_params(model_cfg, r), jax.random.key(0))
  out = {}
  for i, (path, kernel) in enumerate(sorted(_target_paths(boxed, cfg).items())):
    names, shape = tuple(kernel.names), kernel.value.shape
    lead, n_in = _split(names)
    in_shape, out_shape = shape[lead : lead + n_in], shape[lead + n_in :]
    a_shape = (*shape[:lead], *in_shape, cfg.rank)
    init = nn.initializers.variance_scaling(
      1.0,
      "fan_in",
      "truncated_normal",
      in_axis=tuple(range(lead, lead + n_in)),
      out_axis=-1,
      batch_axis=tuple(range(lead)),
    )
    a = init(jax.random.fold_in(rng, i), a_shape, kernel.value.dtype)
    b = jnp.zeros((*shape[:lead], cfg.rank, *out_shape), kernel.value.dtype)
    a_names = (*names[: lead + n_in], RANK_AXIS)
    b_names = (*names[:lead], RANK_AXIS, *names[lead + n_in :])
    out[path[:-1] + ("lora_a",)] = nn.LogicallyPartitioned(a, a_names)
    out[path[:-1] + ("lora_b",)] = nn.LogicallyPartitioned(b, b_names)
  return traverse_util.unflatten_dict(out)


def delta(a: jax.Array, b: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
  """A @ B in the kernel's shape: a [*lead, *in, rank], b [*lead, rank, *out] -> kernel_shape
  [*lead, *in, *out] (lead: a scanned model's layers axis, or none)."""
  lead = a.ndim + b.ndim - len(kernel_shape) - 2
  r = a.shape[-1]
  a2 = a.reshape(*a.shape[:lead], -1, r)
  b2 = b.reshape(*b.shape[:lead], r, -1)
  return jnp.matmul(a2, b2).reshape(kernel_shape)


def merge(base: Mapping[str, Any], adapters: Mapping[str, Any], cfg: LoraConfig) -> Any:
  """The base's parameter tree with W + scale * A @ B for every adapted kernel (a new tree; the
  base is unchanged). Differentiable in the adapters; the base gets no gradient through it."""
  flat = traverse_util.flatten_dict(dict(base))
  flat_ad = traverse_util.flatten_dict(dict(adapters))
  for path in {p[:-1] for p in flat_ad}:
    kernel = jax.lax.stop_gradient(flat[path + ("kernel",)])
    d = delta(flat_ad[path + ("lora_a",)], flat_ad[path + ("lora_b",)], kernel.shape)
    flat[path + ("kernel",)] = kernel + (cfg.scale * d).astype(kernel.dtype)
  return traverse_util.unflatten_dict(flat)


@functools.lru_cache(maxsize=8)
def _jitted_merge(cfg: LoraConfig):
  return jax.jit(functools.partial(merge, cfg=cfg))


def merged(base: Any, params: Any, cfg: LoraConfig) -> Any:
  """A policy stage's trained parameters as a plain model, the tree a stage saves: `params`
  themselves, or with LoRA the base merged with the adapters `params`, as one compiled program
  on the mesh (compiled once per config and shapes; the arrays keep the base's shardings)."""
  return _jitted_merge(cfg)(base, params) if cfg.enabled else params


def policy_params(base: Any, params: Any, cfg: LoraConfig) -> Any:
  """The parameters a policy runs with: `params` themselves, or with LoRA the base merged with
  the adapters `params`."""
  return merge(base, params, cfg) if cfg.enabled else params

"""KV-cache generation and log-prob scoring for the policy (a pure, jit-able function).

Layout (the project's one sequence layout, see `model.py`): a prompt LEFT-padded to P tokens,
followed by a response region of R = `max_new_tokens` slots. Every output array is `[B, P + R]`
so that callers can feed `tokens`/`mask` straight back into `Transformer.apply` or
`objectives.span_logprobs` and multiply by `response_mask` without re-aligning anything:

  tokens         [B, P+R] int32  prompt (as given) then the response; pad_id after EOS.
  mask           [B, P+R] int32  1 on real prompt tokens and on response tokens up to and
                                 including the first EOS; 0 elsewhere.
  response_mask  [B, P+R] int32  `mask` with the prompt columns zeroed (1 on response tokens
                                 up to and including EOS).
  logprobs       [B, P+R] fp32   log pi(token | prefix) of each response token, 0 elsewhere.
  ended          [B] bool        the row emitted EOS within R tokens.
  lengths        [B] int32       number of response tokens (EOS included) = response_mask.sum(-1).

Decoding: one prefill pass writes the prompt into a KV cache of length P + R, then a
`lax.while_loop` decodes one token per step. A while_loop rather than a scan because it stops as
soon as every row has emitted EOS (the slots it never reaches already hold pad_id / mask 0), which
saves whole decode steps when responses are short; sampling is never differentiated, so losing
reverse-mode support costs nothing. Exactly R - 1 decode forward passes run at most (the first
response token comes from the prefill logits, the last one is never fed back).

Log-probs: the returned log-prob of a token is `log_softmax(logits / temperature)[token]`, i.e. of
the temperature-scaled distribution BEFORE any top-k / top-p filtering (and also in greedy mode).
This is exactly what `objectives.span_logprobs(..., temperature)` recomputes from one forward pass, which is
what PPO needs (docs/rlhf-notes.md §9: divide by the temperature before computing log-probs). The
log-probs of the *filtered* (top-k / nucleus) distribution are not recomputable from a plain
forward pass (they depend on the renormalisation over the kept set), so they are not returned;
note that with top_k > 0 or top_p < 1 the tokens are not samples from the distribution whose
log-probs are returned, so importance ratios in PPO are then only approximate (docs/rlhf-notes.md §4:
sample with top_k=0, top_p=1).

Jitting: `generate` is a pure function of arrays plus static configuration. Callers jit it with
`static_argnames=GENERATE_STATIC_ARGNAMES` (and their own in/out shardings).
`temperature` and `top_p` are traced (changing them does not recompile);
`top_k` is static because `lax.top_k` needs a static k.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from instructgpt_jax import data as data_lib
from instructgpt_jax import losses, sharding
from instructgpt_jax import metrics as metrics_lib
from instructgpt_jax import model as model_lib

Array = jax.Array

GENERATE_STATIC_ARGNAMES = ("config", "max_new_tokens", "eos_id", "pad_id", "top_k", "greedy")


@flax.struct.dataclass
class SampleOutput:
  """Generation result; every per-token array is `[B, P + R]` (see the module docstring)."""

  tokens: Array
  mask: Array
  response_mask: Array
  logprobs: Array
  ended: Array
  lengths: Array


def _filter_logits(logits: Array, top_k: int, top_p: Any) -> Array:
  """Top-k then nucleus filtering of `[B, V]` logits: removed entries become -inf.

  Ties at the k-th value (or at the nucleus threshold) are all kept. The nucleus is the smallest
  set of most likely tokens whose probability reaches `top_p` (the most likely token is always
  kept); it is computed on the distribution that remains after top-k.
  """
  neg_inf = jnp.finfo(logits.dtype).min
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, neg_inf, logits)

  def nucleus(lg):
    sorted_lg = jnp.sort(lg, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_lg, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
    keep = mass_before < top_p
    keep = keep.at[..., 0].set(True)
    threshold = jnp.min(jnp.where(keep, sorted_lg, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(lg < threshold, neg_inf, lg)

  if isinstance(top_p, (int, float)):  # Concrete: decide at trace time.
    if top_p < 1.0:
      logits = nucleus(logits)
  else:  # Traced: skip the per-step sort at run time when nucleus sampling is off.
    logits = jax.lax.cond(jnp.asarray(top_p) < 1.0, nucleus, lambda lg: lg, logits)
  return logits


# Tokens per block of the two-level inverse CDF (`sample_with_log_z`): a cumsum over the
# block masses, then one over the chosen block, instead of one over the whole vocabulary.
CDF_BLOCK = 128


def sample_with_log_z(rng: Array, logits: Array, block: int = CDF_BLOCK) -> tuple[Array, Array]:
  """One draw per row from `softmax(logits)` and the row's log-normaliser.

  `[B, V]` -> (tokens `[B]` int32, `logsumexp(logits)` `[B]` fp32). The draw inverts the CDF
  with one uniform per row (`jax.random.categorical` needs V Gumbel variates, a third of a small
  model's decode step on XLA:CPU), in two levels: the cumulative mass of blocks of `block`
  tokens picks a block, the cumulative mass inside it picks the token: about 4x faster on
  XLA:CPU than one cumsum over the vocabulary (docs/speed.md). Entries at -inf (filtered out)
  have probability 0 and are never drawn.
  """
  B, V = logits.shape
  logits = logits.astype(jnp.float32)
  peak = jnp.max(logits, axis=-1)
  nb = -(-V // block)
  e = jnp.exp(logits - peak[:, None])
  e = jnp.pad(e, ((0, 0), (0, nb * block - V))).reshape(B, nb, block)
  mass = e.sum(axis=-1)  # [B, nb]
  cmass = jnp.cumsum(mass, axis=-1)
  total = cmass[:, -1]
  # u in (0, total]: the first block whose cumulative mass reaches u has a positive mass.
  u = (1.0 - jax.random.uniform(rng, (B, 1))[:, 0]) * total
  j = jnp.minimum(jnp.sum(cmass < u[:, None], axis=-1), nb - 1)
  rest = u - jnp.take_along_axis(cmass - mass, j[:, None], axis=1)[:, 0]
  inner = jnp.take_along_axis(e, j[:, None, None], axis=1)[:, 0]  # [B, block]
  # The first positive entry whose cumulative mass reaches the rest; rounding between the
  # block's sum and its cumsum can leave none, then the block's last positive entry.
  hit = (jnp.cumsum(inner, axis=-1) >= rest[:, None]) & (inner > 0)
  last = block - 1 - jnp.argmax(inner[:, ::-1] > 0, axis=-1)
  k = jnp.where(hit.any(axis=-1), jnp.argmax(hit, axis=-1), last)
  return (j * block + k).astype(jnp.int32), peak + jnp.log(total)


def sample_categorical(rng: Array, logits: Array, block: int = CDF_BLOCK) -> Array:
  """One draw per row from `softmax(logits)`, `[B, V]` -> `[B]` int32 (`sample_with_log_z`)."""
  return sample_with_log_z(rng, logits, block)[0]


def _lm_logits(hidden: Array, head: Array) -> Array:
  """`[B, embed] x [embed, vocab] -> [B, vocab]` fp32 logits, formed as the fused losses form
  them (`losses.head_token_log_probs`), so the sampler's log-probs match a forward pass."""
  logits = jnp.dot(hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32)
  return sharding.constrain(logits, ("activation_batch", "activation_vocab"))


def _choose(logits: Array, rng: Array, *, temperature, top_k: int, top_p, greedy: bool):
  """Picks one token per row from `[B, V]` fp32 logits; returns (tokens [B], logprobs [B])."""
  scaled = logits.astype(jnp.float32) / temperature
  unfiltered = not top_k and isinstance(top_p, (int, float)) and top_p >= 1.0
  if greedy:
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  elif unfiltered:
    # Plain sampling: the draw's own normaliser gives the log-prob, with no second pass.
    tok, log_z = sample_with_log_z(rng, scaled)
    return tok, jnp.take_along_axis(scaled, tok[:, None], axis=-1)[:, 0] - log_z
  else:
    tok = sample_categorical(rng, _filter_logits(scaled, top_k, top_p))
  # The log-prob of the distribution before filtering (see the module docstring).
  return tok, losses.token_log_probs(scaled, tok)


def generate(
  params,
  config: model_lib.ModelConfig,
  prompt_tokens: Array,
  prompt_mask: Array,
  rng: Array,
  *,
  max_new_tokens: int,
  eos_id: int,
  pad_id: int,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  greedy: bool = False,
) -> SampleOutput:
  """Samples up to `max_new_tokens` tokens after each (left-padded) prompt.

  Args:
    params: the policy's parameters (the "params" collection, unboxed), `config.head == "lm"`.
    config: the model config (static).
    prompt_tokens: [B, P] int, left-padded (the last column must be a real token for the
      intended layout; other paddings still decode correctly since the last real token is used).
    prompt_mask: [B, P], 1 on real prompt tokens.
    rng: a PRNG key; step i uses `fold_in(rng, i)`.
    max_new_tokens: R, the size of the response region (static).
    eos_id: the token that ends a response; it is emitted and counted in the masks (static).
    pad_id: the token written after EOS (static; must differ from eos_id).
    temperature: > 0; logits are divided by it before sampling and before the log-softmax.
    top_k: keep only the k most likely tokens (0 = off; static).
    top_p: nucleus sampling threshold (1.0 = off; may be traced).
    greedy: argmax decoding (static; rng, top_k and top_p are then unused); the returned
      log-probs are still those of the temperature-scaled distribution.

  Returns:
    A `SampleOutput` with `[B, P + R]` arrays (see the module docstring).
  """
  if config.head != "lm":
    raise ValueError(f"generate needs an LM head, got model.head={config.head!r}.")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
  if eos_id == pad_id:
    raise ValueError(f"pad_id must differ from eos_id (docs/rlhf-notes.md §2), both are {eos_id}.")
  B, P = prompt_tokens.shape
  R = max_new_tokens
  S = P + R
  if config.family == "gpt" and S > config.max_len:
    raise ValueError(
      f"prompt length {P} + max_new_tokens {R} = {S} exceeds model.max_len="
      f"{config.max_len} (learned positions)."
    )

  model = model_lib.Transformer(config)
  variables = {"params": params}
  # The head as [embed, vocab], transposed once before the loop: XLA:CPU's small-batch decode
  # matmul reads this layout about 20 % faster than the tied embedding's [vocab, embed].
  head = model_lib.unembedding(params).T
  choose = lambda lg, key: _choose(
    lg, key, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy
  )

  prompt_tokens = prompt_tokens.astype(jnp.int32)
  prompt_mask = prompt_mask.astype(jnp.int32)
  prompt_len = prompt_mask.sum(axis=-1)  # [B]
  tokens = jnp.concatenate([prompt_tokens, jnp.full((B, R), pad_id, jnp.int32)], axis=1)
  mask = jnp.concatenate([prompt_mask, jnp.zeros((B, R), jnp.int32)], axis=1)
  logprobs = jnp.zeros((B, S), jnp.float32)

  # Prefill: the whole prompt in one pass; `mask` (over the whole cache) has no response keys yet.
  cache = model_lib.init_cache(config, B, S)
  hidden, cache = model.apply(
    variables,
    prompt_tokens,
    mask,
    model_lib.positions_from_mask(prompt_mask),
    cache,
    0,
    method="decode_step",
  )
  last_real = P - 1 - jnp.argmax(prompt_mask[:, ::-1], axis=-1)  # P - 1 for left padding
  # Only the last real position's logits are needed: the head runs on one row per prompt.
  logits = _lm_logits(jnp.take_along_axis(hidden, last_real[:, None, None], axis=1)[:, 0], head)

  def emit(i, logits, tokens, mask, logprobs, done):
    """Chooses response token i (slot P + i) for every row that has not ended."""
    tok, lp = choose(logits, jax.random.fold_in(rng, i))
    live = ~done
    tok = jnp.where(live, tok, pad_id)
    tokens = tokens.at[:, P + i].set(tok)
    mask = mask.at[:, P + i].set(live.astype(jnp.int32))
    logprobs = logprobs.at[:, P + i].set(jnp.where(live, lp, 0.0))
    done = done | (live & (tok == eos_id))
    return tok, tokens, mask, logprobs, done

  done = jnp.zeros((B,), bool)
  tok, tokens, mask, logprobs, done = emit(0, logits, tokens, mask, logprobs, done)

  def cond(state):
    i, _, _, _, _, _, done = state
    return (i < R) & ~jnp.all(done)

  def body(state):
    i, prev, cache, tokens, mask, logprobs, done = state
    slot = P + i - 1  # where `prev` (response token i - 1) sits; its key validity is in `mask`
    positions = (prompt_len + i - 1)[:, None]
    hidden, cache = model.apply(
      variables, prev[:, None], mask, positions, cache, slot, method="decode_step"
    )
    logits = _lm_logits(hidden[:, 0], head)
    tok, tokens, mask, logprobs, done = emit(i, logits, tokens, mask, logprobs, done)
    return i + 1, tok, cache, tokens, mask, logprobs, done

  state = (jnp.asarray(1, jnp.int32), tok, cache, tokens, mask, logprobs, done)
  _, _, _, tokens, mask, logprobs, done = jax.lax.while_loop(cond, body, state)

  response_mask = mask.at[:, :P].set(0)
  return SampleOutput(
    tokens=tokens,
    mask=mask,
    response_mask=response_mask,
    logprobs=logprobs,
    ended=done,
    lengths=response_mask.sum(axis=-1),
  )


@functools.lru_cache(maxsize=16)
def _jitted_generate(
  config: model_lib.ModelConfig, max_new_tokens: int, eos_id: int, pad_id: int, greedy: bool
):
  """One jitted `generate` per setting, so repeated `generate_batched` calls (labelling in
  chunks, one call per evaluated policy) reuse the compiled program."""
  return jax.jit(
    lambda p, t, m, r, temp: generate(
      p,
      config,
      t,
      m,
      r,
      max_new_tokens=max_new_tokens,
      eos_id=eos_id,
      pad_id=pad_id,
      temperature=temp,
      greedy=greedy,
    )
  )


def generate_batched(
  params,
  config: model_lib.ModelConfig,
  prompt_tokens,
  prompt_mask,
  rng: Array,
  mesh,
  rules,
  *,
  batch_size: int,
  max_new_tokens: int,
  eos_id: int,
  pad_id: int,
  temperature: float = 1.0,
  greedy: bool = False,
  progress_name: str = "sample",
  progress: metrics_lib.Progress | None = None,
) -> dict[str, Any]:
  """Host-side helper: `generate` over many prompts in fixed-size batches on `mesh`, placed by
  the logical `rules` (batch rows and KV cache); every process gets every sample.

  prompt_tokens/prompt_mask: numpy [N, P]. The last batch is padded (so one program serves
  every batch) and the padding rows are dropped. Returns numpy arrays of `SampleOutput`'s fields.
  `progress` (a stage's count of responses) advances by the rows of each batch; without it a
  line per batch is printed under `progress_name`.
  """
  gen = _jitted_generate(config, max_new_tokens, eos_id, pad_id, greedy)
  batch_index = itertools.count()
  fn = lambda b: gen(
    params,
    b["tokens"],
    b["mask"],
    jax.random.fold_in(rng, next(batch_index)),
    jnp.float32(temperature),
  )
  arrays = {"tokens": np.asarray(prompt_tokens), "mask": np.asarray(prompt_mask)}
  num_batches = -(-len(prompt_tokens) // sharding.round_batch(batch_size, mesh, rules))
  own = progress is None
  if own:
    progress = metrics_lib.Progress(progress_name, num_batches, unit="batch")
  outs = []
  for i, (batch, out) in enumerate(data_lib.map_batches(fn, arrays, batch_size, mesh, rules)):
    valid = batch["valid"] > 0
    outs.append({f.name: np.asarray(getattr(out, f.name))[valid] for f in dataclasses.fields(out)})
    if own:
      progress.update(i + 1)
    else:
      progress.advance(int(valid.sum()))
  return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

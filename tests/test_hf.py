"""Hugging Face interop, checked against transformers itself (the peer library is the reference).

Tiny random-weight checkpoints are built here with transformers (nothing is downloaded), imported
with hf.py, and compared on ragged left-padded batches and greedy KV-cache decoding; exported
policies and reward models are read back by transformers' from_pretrained. The tokenizer is a
small BPE trained with the `tokenizers` library, compared with transformers' fast tokenizer and
its chat-template rendering. The public preference formats are read through data.py's tfds path.
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from instructgpt_jax import data as data_lib
from instructgpt_jax import (
  hf,
  hf_tokenizer,
  lora,
  objectives,
  preferences,
  sampling,
  sharding,
  train_state,
)
from instructgpt_jax import model as model_lib
from instructgpt_jax import tokenizer as tokenizer_lib
from tests import helpers

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 448  # Holds the test tokenizer (400 byte-level BPE tokens).
# ChatML, as Qwen2.5 ships it (without the tool-calling branches).
CHATML = (
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
  " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
  "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Llama 3's shape: a BOS text first, then header tokens.
LLAMA3ISH = (
  "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
  "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
  "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
  "{% endif %}"
)


def _hf_model(kind: str, head: str = "lm"):
  """A tiny random transformers model of `kind` with non-trivial norms and biases."""
  torch.manual_seed(0)
  common = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    pad_token_id=0,
  )
  if kind == "gpt2":
    cfg = transformers.GPT2Config(
      vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=8, n_positions=64, bos_token_id=1,
      eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    cls = transformers.GPT2LMHeadModel
  elif kind == "llama":  # GQA and Llama 3.1 rope scaling (a short original context, so it bites).
    rope = dict(
      rope_type="llama3",
      factor=8.0,
      low_freq_factor=1.0,
      high_freq_factor=4.0,
      original_max_position_embeddings=16,
    )
    cfg = transformers.LlamaConfig(**common, rope_scaling=rope, rope_theta=500000.0)
    cls = transformers.LlamaForCausalLM
  elif kind == "qwen2":  # qkv biases, tied embeddings.
    cfg = transformers.Qwen2Config(**common, tie_word_embeddings=True)
    cls = transformers.Qwen2ForCausalLM
  elif kind == "qwen3":  # qk-norm, head_dim 16 != 64 / 8.
    cfg = transformers.Qwen3Config(**common, head_dim=16)
    cls = transformers.Qwen3ForCausalLM
  else:
    raise ValueError(kind)
  if head == "scalar":
    cfg.num_labels = 1
    cls = getattr(transformers, cls.__name__.replace("LMHeadModel", "ForCausalLM")
                  .replace("ForCausalLM", "ForSequenceClassification"))  # fmt: skip
  model = cls(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """{kind: (directory, transformers model)} for the four families."""
  out = {}
  for kind in ("gpt2", "llama", "qwen2", "qwen3"):
    model = _hf_model(kind)
    path = str(tmp_path_factory.mktemp(kind))
    model.save_pretrained(path)
    out[kind] = (path, model)
  return out


def _batch(seed: int = 0, batch: int = 4, seq: int = 20):
  """Ragged left-padded tokens [B, T], mask and positions (cumsum(mask) - 1)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, VOCAB, (batch, seq)).astype(np.int32)
  mask = np.ones_like(tokens)
  for i in range(batch):
    mask[i, : (i * 5) % seq] = 0
  tokens = np.where(mask == 1, tokens, 0)
  return tokens, mask, np.asarray(model_lib.positions_from_mask(jnp.asarray(mask)))


def _theirs(model, tokens, mask, positions) -> np.ndarray:
  with torch.no_grad():
    out = model(
      input_ids=torch.tensor(tokens, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
      position_ids=torch.tensor(positions, dtype=torch.long),
    )
  return out.logits.numpy()


def _assert_close(ours: np.ndarray, theirs: np.ndarray, mask: np.ndarray | None = None) -> float:
  """Max abs difference on real tokens, and relative to the largest logit at most 1e-4."""
  real = np.ones(ours.shape[:2], bool) if mask is None else mask.astype(bool)
  diff = float(np.abs(ours[real] - theirs[real]).max())
  scale = float(np.abs(theirs[real]).max())
  assert diff <= 1e-4 * scale, (diff, scale)
  return diff


# --------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_import_logits_match_transformers(checkpoints, kind, scan_layers):
  path, model = checkpoints[kind]
  cfg = hf.model_config_from_hf(hf.read_config(path), scan_layers=scan_layers)
  assert cfg.qkv_bias == (kind == "qwen2") and cfg.qk_norm == (kind == "qwen3")
  params = hf.load_params(path, cfg)
  tokens, mask, positions = _batch()
  ours = np.asarray(helpers.forward(cfg, params, tokens, mask))
  _assert_close(ours, _theirs(model, tokens, mask, positions), mask)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_lora_adapts_an_imported_checkpoint(checkpoints, kind):
  """LoRA on an imported model (GQA; Qwen2's q/k/v biases): fresh adapters keep transformers'
  logits, every linear layer of a block is adapted, and the LM loss's gradient reaches B."""
  path, model = checkpoints[kind]
  cfg = hf.model_config_from_hf(hf.read_config(path))
  params = hf.load_params(path, cfg)
  lcfg = lora.LoraConfig(rank=4)
  adapters = nn.meta.unbox(lora.boxed_adapters(cfg, lcfg, jax.random.key(0)))
  layer = adapters["layer_1"]
  assert set(layer["attn"]) == {"query", "key", "value", "out"}
  assert set(layer["mlp"]) == {"wi_gate", "wi_up", "wo"}
  tokens, mask, positions = _batch()
  ours = np.asarray(helpers.forward(cfg, lora.merge(params, adapters, lcfg), tokens, mask))
  _assert_close(ours, _theirs(model, tokens, mask, positions), mask)
  batch = {"tokens": tokens, "mask": mask, "loss_mask": mask}
  apply_fn = model_lib.Transformer(cfg).apply
  grads = jax.grad(
    lambda a: objectives.lm_loss_fn(lora.merge(params, a, lcfg), apply_fn, batch)[0]
  )(adapters)
  assert float(jnp.abs(grads["layer_1"]["attn"]["value"]["lora_b"]).max()) > 0


def test_llama3_rope_scaling_is_needed_for_parity(checkpoints):
  """The rope-scaled checkpoint is not matched by plain RoPE: the scaling is really tested."""
  path, model = checkpoints["llama"]
  cfg = hf.model_config_from_hf(hf.read_config(path))
  assert cfg.rope_scaling == "llama3" and cfg.rope_original_max_len == 16
  plain = cfg.replace(rope_scaling="none")
  tokens, mask, positions = _batch()
  ours = np.asarray(helpers.forward(plain, hf.load_params(path, cfg), tokens, mask))
  assert np.abs(ours - _theirs(model, tokens, mask, positions)).max() > 1e-3


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_greedy_kv_cache_decoding_matches_generate(checkpoints, kind):
  path, model = checkpoints[kind]
  cfg = hf.model_config_from_hf(hf.read_config(path))
  params = hf.load_params(path, cfg)
  prompts = np.random.default_rng(1).integers(3, VOCAB, (3, 7)).astype(np.int32)
  mask = np.ones_like(prompts)
  mask[1, :3] = mask[2, :5] = 0  # Ragged left padding: transformers also derives positions.
  prompts = prompts * mask
  out = sampling.generate(
    params,
    cfg,
    jnp.asarray(prompts),
    jnp.asarray(mask),
    jax.random.key(0),
    max_new_tokens=12,
    eos_id=VOCAB + 1,  # Never sampled: transformers' generate would stop at a real one.
    pad_id=0,
    greedy=True,
  )
  with torch.no_grad():
    theirs = model.generate(
      torch.tensor(prompts, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
      max_new_tokens=12,
      do_sample=False,
      eos_token_id=None,
      pad_token_id=0,
    ).numpy()
  np.testing.assert_array_equal(np.asarray(out.tokens), theirs)


def test_sharded_checkpoint_imports_onto_8_devices(tmp_path):
  """An index.json-sharded checkpoint lands on a (1, 4, 2) mesh, equal to the host import."""
  model = _hf_model("llama")
  model.save_pretrained(str(tmp_path), max_shard_size="40KB")
  assert os.path.isfile(tmp_path / "model.safetensors.index.json")
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 1
  cfg = hf.model_config_from_hf(hf.read_config(str(tmp_path)))
  mesh = sharding.make_mesh((1, 4, 2))
  shardings = train_state.param_shardings(cfg, mesh, sharding.DEFAULT_RULES)
  placed = hf.load_params(str(tmp_path), cfg, shardings)
  host = hf.load_params(str(tmp_path), cfg)
  for (path, got), want, s in zip(
    jax.tree_util.tree_leaves_with_path(placed), jax.tree.leaves(host), jax.tree.leaves(shardings)
  ):
    assert got.sharding == s, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.asarray(got), want)
  # The embedding is really split: vocab over "tensor", embed over "fsdp".
  assert len(placed["token_embed"]["embedding"].addressable_shards) == 8
  tokens, mask, positions = _batch()
  with jax.set_mesh(mesh):
    ours = np.asarray(helpers.forward(cfg, placed, tokens, mask))
  _assert_close(ours, _theirs(model, tokens, mask, positions), mask)


@pytest.mark.parametrize(
  "kind,field,value,match",
  [
    ("llama", "model_type", "gemma", "model_type='gemma'"),
    ("llama", "hidden_act", "gelu", "hidden_act='gelu'"),
    ("llama", "attention_bias", True, "attention_bias=True"),
    ("llama", "mlp_bias", True, "mlp_bias=True"),
    ("qwen2", "use_sliding_window", True, "use_sliding_window=True"),
    ("gpt2", "activation_function", "relu", "activation_function='relu'"),
    ("gpt2", "scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx"),
  ],
)
def test_unrepresentable_configs_are_refused_by_field(checkpoints, kind, field, value, match):
  hf_cfg = dict(hf.read_config(checkpoints[kind][0]), **{field: value})
  with pytest.raises(ValueError, match=match):
    hf.model_config_from_hf(hf_cfg)


@pytest.mark.parametrize("key", ["rope_parameters", "rope_scaling"])
def test_unsupported_rope_type_is_refused_by_field(checkpoints, key):
  hf_cfg = hf.read_config(checkpoints["llama"][0])
  hf_cfg.pop("rope_parameters", None)
  hf_cfg[key] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
  with pytest.raises(ValueError, match=rf"{key}\.rope_type='yarn'"):
    hf.model_config_from_hf(hf_cfg)


def test_legacy_rope_fields_are_read():
  """Checkpoints written before transformers 5 spell rope as rope_theta + rope_scaling."""
  cfg = hf.model_config_from_hf(
    dict(
      model_type="llama",
      vocab_size=10,
      num_hidden_layers=1,
      hidden_size=16,
      num_attention_heads=2,
      intermediate_size=32,
      rope_theta=500000.0,
      rope_scaling={"type": "linear", "factor": 2.0},
    )
  )
  assert (cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor) == (500000.0, "linear", 2.0)


def test_wrong_model_config_is_refused(checkpoints):
  path = checkpoints["qwen2"][0]
  cfg = hf.model_config_from_hf(hf.read_config(path)).replace(num_layers=3)
  with pytest.raises(ValueError, match="model.num_layers=3"):
    hf.load_params(path, cfg)


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------

EXPORT_CASES = {
  "gpt_tied": dict(family="gpt", num_kv_heads=0),
  "gpt_untied": dict(family="gpt", num_kv_heads=0, tie_embeddings=False),
  "llama_gqa_rope": dict(
    family="llama",
    tie_embeddings=False,
    rope_scaling="llama3",
    rope_factor=8.0,
    rope_original_max_len=16,
    rope_theta=500000.0,
  ),
  "qwen2_bias": dict(family="llama", qkv_bias=True),
  "qwen3_qknorm": dict(family="llama", qk_norm=True, head_size=16, tie_embeddings=False),
}


def _random_params(cfg: model_lib.ModelConfig, seed: int = 0):
  """Initialised params with every leaf perturbed (zero biases and unit norms would hide
  mapping errors)."""
  params = helpers.init_params(cfg, seed)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(
    tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  )


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_exported_policy_loads_in_transformers(tmp_path, case):
  cfg = helpers.tiny_model(vocab_size=VOCAB, d_ff=96, **EXPORT_CASES[case])
  params = _random_params(cfg)
  hf.export_policy(params, cfg, str(tmp_path), bos_id=1, eos_id=2, pad_id=0)
  written = json.load(open(tmp_path / "config.json"))
  if cfg.family == "llama":  # config.json's attention_bias tells whether q/k/v carry biases.
    biases = [n for n in hf.SafetensorsReader(str(tmp_path)).names() if n.endswith("q_proj.bias")]
    assert written["attention_bias"] == bool(biases) == cfg.qkv_bias
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  tokens, mask, positions = _batch(seq=16)
  ours = np.asarray(helpers.forward(cfg, params, tokens, mask))
  _assert_close(ours, _theirs(model, tokens, mask, positions), mask)
  # And back: the re-import is the same model.
  again = hf.load_params(str(tmp_path), hf.model_config_from_hf(hf.read_config(str(tmp_path))))
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_exported_reward_model_scores_like_ours(tmp_path, family):
  cfg = helpers.tiny_model(family, vocab_size=VOCAB, d_ff=96, head="scalar")
  params = _random_params(cfg)
  params["scalar_head"]["bias"] = jnp.array([0.7])
  pad, eos = 0, 2
  # The pipeline's layout: left-padded prompt, response + EOS right-padded with pad.
  tokens = np.random.default_rng(3).integers(3, VOCAB, (4, 14)).astype(np.int32)
  mask = np.zeros_like(tokens)
  for i, (start, end) in enumerate([(0, 14), (2, 10), (4, 12), (1, 7)]):
    mask[i, start:end] = 1
    tokens[i, end - 1] = eos
  tokens = np.where(mask == 1, tokens, pad)
  ours = np.asarray(objectives.sequence_rewards(params, cfg, tokens, jnp.asarray(mask), 4))
  hf.export_reward_model(params, cfg, str(tmp_path), pad_id=pad, eos_id=eos)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval()
  with torch.no_grad():
    score = model(
      input_ids=torch.tensor(tokens, dtype=torch.long),
      attention_mask=torch.tensor(mask),
      position_ids=torch.tensor(np.asarray(model_lib.positions_from_mask(jnp.asarray(mask)))),
    ).logits[:, 0]
  score = score.numpy()
  bias = json.load(open(tmp_path / "config.json")).get("reward_bias", 0.0)
  assert (bias == 0.0) == (family == "gpt")  # GPT-2 folds it into ln_f; RMSNorm cannot.
  np.testing.assert_allclose(score + bias, ours, atol=1e-5, rtol=1e-5)
  # Re-imported as a scalar-head model, the reward is ours again (bias included).
  back = hf.load_params(str(tmp_path), cfg)
  again = objectives.sequence_rewards(back, cfg, tokens, jnp.asarray(mask), 4)
  np.testing.assert_allclose(np.asarray(again), ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_exported_likelihood_reward_model_scores_like_ours(tmp_path, family):
  """The likelihood-term RM (not in the paper): the directory loads as a sequence classifier and
  as a causal LM, and score + reward_bias + likelihood_scale * mean response log-prob is ours."""
  cfg = helpers.tiny_model(
    family, vocab_size=VOCAB, d_ff=96, head="scalar", reward_likelihood="mean"
  )
  params = _random_params(cfg)
  params["scalar_head"]["bias"] = jnp.array([0.7])
  params["likelihood_scale"] = jnp.asarray(0.8, jnp.float32)
  pad, eos, start = 0, 2, 6
  tokens = np.random.default_rng(4).integers(3, VOCAB, (3, 14)).astype(np.int32)
  mask = np.zeros_like(tokens)
  for i, (lo, end) in enumerate([(0, 14), (2, 10), (4, 12)]):  # Left-padded prompt [lo, 6).
    mask[i, lo:end] = 1
    tokens[i, end - 1] = eos
  tokens = np.where(mask == 1, tokens, pad)
  ours = np.asarray(objectives.sequence_rewards(params, cfg, tokens, jnp.asarray(mask), start))
  hf.export_reward_model(params, cfg, str(tmp_path), pad_id=pad, eos_id=eos)
  extra = json.load(open(tmp_path / "config.json"))
  assert (extra["reward_likelihood"], extra["reward_bias"]) == ("mean", pytest.approx(0.7))
  kwargs = dict(
    input_ids=torch.tensor(tokens, dtype=torch.long),
    attention_mask=torch.tensor(mask),
    position_ids=torch.tensor(np.asarray(model_lib.positions_from_mask(jnp.asarray(mask)))),
  )
  classifier = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path))
  lm = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))
  with torch.no_grad():
    score = classifier.eval()(**kwargs).logits[:, 0].numpy()
    logp = torch.log_softmax(lm.eval()(**kwargs).logits, -1).numpy()
  # Response token t (t >= start, real, with a real predecessor) read at position t - 1.
  picked = np.take_along_axis(logp[:, start - 1 : -1], tokens[:, start:, None], axis=2)[..., 0]
  valid = (mask[:, start:] == 1) & (mask[:, start - 1 : -1] == 1)
  mean_logp = (picked * valid).sum(1) / valid.sum(1)
  theirs = score + extra["reward_bias"] + extra["likelihood_scale"] * mean_logp
  np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=1e-5)
  back = hf.load_params(str(tmp_path), cfg)
  again = objectives.sequence_rewards(back, cfg, tokens, jnp.asarray(mask), start)
  np.testing.assert_allclose(np.asarray(again), ours, atol=1e-5, rtol=1e-5)


def test_reward_export_refuses_pad_equal_to_eos(tmp_path):
  cfg = helpers.tiny_model("gpt", vocab_size=VOCAB, head="scalar")
  with pytest.raises(ValueError, match="pad_id == eos_id"):
    hf.export_reward_model(helpers.init_params(cfg), cfg, str(tmp_path), pad_id=2, eos_id=2)


# --------------------------------------------------------------------------------------
# Tokenizer and chat template
# --------------------------------------------------------------------------------------

SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
SPECIALS += ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def _write_tokenizer(directory: str, *, pad: bool = True, template: str = CHATML) -> str:
  """A byte-level BPE trained on a few sentences, saved like a transformers fast tokenizer."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tk = Tokenizer(models.BPE())
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tk.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
  )
  text = ["Write a poem about the sea.", "The sea is wide and the sky is blue!"] * 20
  tk.train_from_iterator(text, trainer)
  os.makedirs(directory, exist_ok=True)
  tk.save(os.path.join(directory, "tokenizer.json"))
  config = dict(
    tokenizer_class="PreTrainedTokenizerFast",
    bos_token="<s>",
    eos_token="<|im_end|>",
    chat_template=template,
  )
  if pad:
    config["pad_token"] = "<pad>"
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)
  return directory


MESSAGES = [
  {"role": "system", "content": "Be brief."},
  {"role": "user", "content": "Write a poem about the sea."},
  {"role": "assistant", "content": "The sea is wide!"},
  {"role": "user", "content": "And the sky?"},
]


def test_hf_tokenizer_matches_transformers(tmp_path):
  path = _write_tokenizer(str(tmp_path))
  tok = hf_tokenizer.HfTokenizer.load(path)
  ref = transformers.AutoTokenizer.from_pretrained(path)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (
    ref.pad_token_id,
    ref.bos_token_id,
    ref.eos_token_id,
  )
  assert tok.vocab_size == len(ref)
  text = "The sea is wide, and the SKY is blue? ünïcode\n  spaces"
  assert tok.encode(text) == ref.encode(text, add_special_tokens=False)
  assert tok.decode(tok.encode(text)) == text
  # Pads at both edges and BOS are dropped, decoding stops at EOS.
  ids = [tok.pad_id, tok.bos_id, *tok.encode(text), tok.eos_id, 5, tok.pad_id]
  assert tok.decode(ids) == text
  rendered = tok.render_chat(MESSAGES, add_generation_prompt=True)
  assert rendered == ref.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
  # Special tokens written in the rendered text are parsed as such.
  assert tok.encode(rendered)[0] == tok._tk.token_to_id("<|im_start|>")  # pylint: disable=protected-access


def test_chat_template_bos_is_left_to_the_layout(tmp_path):
  """A template that writes bos_token renders without it: the pipeline prepends the BOS id."""
  path = _write_tokenizer(str(tmp_path), template=LLAMA3ISH)
  tok = hf_tokenizer.HfTokenizer.load(path)
  ref = transformers.AutoTokenizer.from_pretrained(path)
  ours = [tok.bos_id, *tok.encode(tok.render_chat(MESSAGES, add_generation_prompt=True))]
  theirs = ref.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)
  theirs = theirs["input_ids"] if isinstance(theirs, dict) or hasattr(theirs, "keys") else theirs
  assert ours == list(theirs)


def test_missing_pad_token_borrows_an_id_other_than_eos(tmp_path):
  tok = hf_tokenizer.HfTokenizer.load(_write_tokenizer(str(tmp_path), pad=False))
  assert tok.pad_id != tok.eos_id
  tok.check_vocab(tok.vocab_size + 64)  # An embedding padded past the tokenizer is fine.
  with pytest.raises(ValueError, match="must belong to the model"):
    tok.check_vocab(tok.vocab_size - 1)


def test_prompt_layout_without_bos(tmp_path):
  """A tokenizer without BOS (Qwen) starts prompts with the text itself."""
  path = _write_tokenizer(str(tmp_path))
  cfg = json.load(open(os.path.join(path, "tokenizer_config.json")))
  cfg["bos_token"] = None
  json.dump(cfg, open(os.path.join(path, "tokenizer_config.json"), "w"))
  tok = hf_tokenizer.HfTokenizer.load(path)
  assert tok.bos_id is None
  enc = data_lib.encode_prompts(tok, ["The sea"], 8)
  row = enc.tokens[0][enc.mask[0] == 1].tolist()
  assert row == tok.encode("The sea")


# Beyond the world's lowercase words: capitals, names never seen, digits, runs of spaces, tabs,
# newlines at either end, characters only byte fallback can write, specials' look-alikes.
ODD_TEXTS = [
  "",
  " ",
  "\n",
  "  leading and trailing  ",
  "Tami Is 12 Years Old .",
  "QWERTZ Xylophonia-Vangelis met Zyx in 2031 !!",
  "a\n\n  b\t c\n",
  "\nstarts with a newline",
  "é ü ✓ 日本語 🙂 ~ ^ `",
  "what is 1234567890 ? answer : 42 .",
  "s> </ <pad >",
]


def _world_texts(world_dir: str) -> list[str]:
  """Every text of the world's files (prompts, responses, pretraining paragraphs), and each
  with capitals, so pieces and byte fallback both get exercised."""
  texts = []
  for name in sorted(os.listdir(world_dir)):
    if name.endswith(".jsonl"):
      for line in open(os.path.join(world_dir, name), encoding="utf-8"):
        row = json.loads(line)
        texts += [row[k] for k in ("text", "prompt", "response") if k in row]
  return texts + [t.title() for t in texts[::7]] + [t.upper() for t in texts[::13]] + ODD_TEXTS


def test_world_tokenizer_written_as_tokenizer_json_encodes_exactly(tmp_path):
  """The world's sentencepiece model, written as tokenizer.json, gives the same ids as
  sentencepiece for every world text (through transformers' AutoTokenizer and through our own
  HfTokenizer), decodes back to the text, and renders the prompt format in its chat template."""
  from instructgpt_jax.workspace import Workspace  # pylint: disable=import-outside-toplevel

  ws = Workspace(helpers.config("sft"), str(tmp_path / "run"))
  sp = ws.tokenizer()
  out = str(tmp_path / "hf")
  hf_tokenizer.write_sentencepiece_as_hf(sp.path, out, model_max_length=192)
  ref = transformers.AutoTokenizer.from_pretrained(out)
  ours = hf_tokenizer.HfTokenizer.load(out)
  assert (ref.pad_token_id, ref.unk_token_id, ref.bos_token_id, ref.eos_token_id) == (0, 1, 2, 3)
  assert (ours.pad_id, ours.bos_id, ours.eos_id) == (sp.pad_id, sp.bos_id, sp.eos_id)
  assert len(ref) == ours.vocab_size == sp.vocab_size
  texts = _world_texts(os.path.join(ws.workdir, "world"))
  assert len(texts) > 9000
  want = sp.encode_batch(texts)
  assert ours.encode_batch(texts) == want
  assert [ref.encode(t, add_special_tokens=False) for t in texts] == want
  assert [ref.decode(ids) for ids in want] == texts
  assert [ours.decode(ids) for ids in want] == texts
  # tokenizer(prompt) is the policy's input (BOS + prompt, as data.encode_prompts lays it out);
  # tokenizer(prompt, response) the reward model's (BOS + prompt + response + EOS).
  demo = json.loads(open(os.path.join(ws.workdir, "world", "demonstrations.jsonl")).readline())
  prompt, response = demo["prompt"], demo["response"]
  assert prompt.endswith("answer :")
  enc = data_lib.encode_prompts(sp, [prompt], 64)
  assert ref(prompt).input_ids == enc.tokens[0][enc.mask[0] == 1].tolist()
  sft = data_lib.encode_sft(sp, [prompt], [response], 64, 32)
  full = sft["tokens"][0][sft["mask"][0] == 1].tolist()
  assert ref(prompt, response).input_ids == full
  chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
  ids = lambda x: list(x["input_ids"] if hasattr(x, "keys") else x)
  assert ids(ref.apply_chat_template(chat, tokenize=True)) == full
  assert ids(ref.apply_chat_template(chat[:1], add_generation_prompt=True)) == ref(prompt).input_ids
  with pytest.raises(Exception, match="only user and assistant"):
    ref.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)


def test_whitespace_only_pieces_convert_exactly(tmp_path):
  """Texts with runs of spaces train pieces such as "▁▁▁▁"; they form as in sentencepiece."""
  rng = np.random.default_rng(0)
  words = "def return self value the of and Zed 42".split()
  texts = [
    "\n".join(
      " " * int(rng.choice([0, 2, 4, 8])) + " ".join(rng.choice(words, 5)) for _ in range(3)
    )
    for _ in range(400)
  ]
  sp = tokenizer_lib.train_tokenizer(texts, str(tmp_path / "t.model"), 320)
  tk = hf_tokenizer.tokenizer_from_sentencepiece(sp.path)
  assert {"\u2581\u2581", "\u2581\u2581\u2581\u2581"} <= set(tk.get_vocab())
  probe = texts + [t.replace(" ", "   ") for t in texts[:50]]
  assert [e.ids for e in tk.encode_batch(probe, add_special_tokens=False)] == sp.encode_batch(probe)


def test_unconvertible_sentencepiece_models_are_refused(tmp_path):
  # A soft vocabulary size: the corpus is too small for a fixed one.
  texts = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen jugs"] * 50
  unigram = tokenizer_lib.train_tokenizer(
    texts,
    str(tmp_path / "u.model"),
    60,
    model_type="unigram",
    byte_fallback=False,
    hard_vocab_limit=False,
  )
  with pytest.raises(ValueError, match="model_type=1 cannot be written"):
    hf_tokenizer.tokenizer_from_sentencepiece(unigram.path)
  nfkc = tokenizer_lib.train_tokenizer(
    texts,
    str(tmp_path / "n.model"),
    60,
    normalization_rule_name="nmt_nfkc",
    byte_fallback=False,
    hard_vocab_limit=False,
  )
  with pytest.raises(ValueError, match="normalizer_spec.name='nmt_nfkc'"):
    hf_tokenizer.tokenizer_from_sentencepiece(nfkc.path)


# --------------------------------------------------------------------------------------
# Public preference formats (through data.py's tfds path and hygiene)
# --------------------------------------------------------------------------------------


def _write_jsonl(path, rows) -> str:
  with open(path, "w") as f:
    for row in rows:
      f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
  return str(path)


def _all_splits(path: str, data_dir: str, chat=None, kind: str = "comparisons") -> list[dict]:
  hygiene = data_lib.Hygiene(split_fractions=(0.5, 0.25, 0.25))
  rows = [
    r
    for split in data_lib.SPLITS
    for r in data_lib.load_split(kind, path, data_dir, split, hygiene, chat)
  ]
  return sorted(rows, key=lambda r: r["index"])


def test_pairwise_hh_and_rated_formats_through_tfds(tmp_path):
  path = _write_jsonl(
    tmp_path / "prefs.jsonl",
    [
      {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
      {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A fruit?\n\nAssistant: A pear.",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A fruit?\n\nAssistant: No.",
      },
      {
        "prompt": [{"role": "user", "content": "Count to two."}],
        "chosen": [{"role": "assistant", "content": "1, 2"}],
        "rejected": [{"role": "assistant", "content": "2, 1"}],
        "user_id": 7,
      },
      {
        "instruction": "Say hi.",
        "completions": [
          {"response": "hi", "overall_score": 7},
          {"response": "hello", "overall_score": 9},
          {"response": "hey", "overall_score": 7},
          {"response": "bye", "overall_score": 1.5},
        ],
      },
      {"prompt": "Pick.", "responses": ["a", "b", "c"], "scores": [0.2, 0.2, 0.9]},
      # The project's own K-way format still reads alongside.
      {"prompt": "Own format.", "responses": ["x", "y"], "ranking": [1, 0], "user_id": "u1"},
    ],
  )
  rows = _all_splits(path, str(tmp_path / "tfds"))
  assert [r["ranking"] for r in rows] == [[0, 1], [0, 1], [0, 1], [1, 0, 1, 2], [1, 1, 0], [1, 0]]
  assert rows[0]["responses"] == ["Blue.", "Seven."]
  hh = rows[1]
  assert hh["prompt"] == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A fruit?\n\nAssistant:"
  assert hh["responses"] == ["A pear.", "No."]
  assert rows[2]["prompt"] == "\n\nHuman: Count to two.\n\nAssistant:"  # Plain transcript.
  assert rows[2]["user_id"] == "7"
  assert rows[3]["prompt"] == "Say hi." and rows[3]["responses"][1] == "hello"
  assert rows[3]["user_id"] == preferences.derived_user_id("Say hi.")


def test_message_lists_render_through_the_chat_template(tmp_path):
  path = _write_jsonl(
    tmp_path / "prefs.jsonl",
    [
      {
        "chosen": [
          {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello"},
        ],
        "rejected": [
          {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Go away"},
        ],
      }
    ],
  )
  rows = _all_splits(path, str(tmp_path / "tfds"), data_lib.ChatTemplate(CHATML, "<|im_end|>"))
  assert rows[0]["prompt"] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
  assert rows[0]["responses"] == ["Hello", "Go away"]
  demos = _write_jsonl(
    tmp_path / "demos.jsonl",
    [{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}],
  )
  got = _all_splits(demos, str(tmp_path / "tfds"), kind="demonstrations")
  assert (got[0]["prompt"], got[0]["response"]) == ("\n\nHuman: Q\n\nAssistant:", "A")


def test_hygiene_applies_to_public_formats(tmp_path):
  """Duplicate prompts are dropped and derived user ids keep a prompt's copies together."""
  rows = [{"prompt": f"Question {i % 3}", "chosen": "good", "rejected": "bad"} for i in range(9)]
  path = _write_jsonl(tmp_path / "dups.jsonl", rows)
  got = _all_splits(path, str(tmp_path / "tfds"))
  assert sorted(r["prompt"] for r in got) == ["Question 0", "Question 1", "Question 2"]


@pytest.mark.parametrize(
  "row,match",
  [
    ('{"prompt": "p", "chosen": "a"}', "missing field 'rejected'"),
    ('{"chosen": "no transcript", "rejected": "x"}', "not an HH transcript"),
    (
      '{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: c\\n\\nAssistant: d"}',
      "differ before their last Assistant turn",
    ),
    ('{"prompt": "p", "completions": [{"response": "a", "score": "high"}]}', "must be a number"),
    ('{"prompt": "p", "completions": [{"response": "a"}, {"text": "b", "score": 1}]}', "score"),
    ('{"prompt": "p", "responses": ["a", "b"], "scores": [1]}', "'scores' has 1 entries"),
    ('{"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}', "role"),
    ('{"instruction": "p", "completions": [{"response": "a", "score": 1}]}', "1 completions"),
  ],
)
def test_bad_preference_lines_name_file_and_line(tmp_path, row, match):
  good = {"prompt": "fine", "chosen": "a", "rejected": "b"}
  path = _write_jsonl(tmp_path / "bad.jsonl", [good, row])
  with pytest.raises(data_lib.DataError, match=rf"bad\.jsonl:2: .*{match}"):
    data_lib.read_jsonl(path, "comparisons")


# --------------------------------------------------------------------------------------
# model.init = "hf:/dir" in a workspace
# --------------------------------------------------------------------------------------


def test_workspace_starts_from_an_imported_checkpoint(tmp_path, checkpoints):
  from instructgpt_jax.workspace import Workspace  # pylint: disable=import-outside-toplevel

  path, model = checkpoints["qwen2"]
  _write_tokenizer(path)
  config = helpers.config("sft")
  config.model.init = "hf:" + path
  config.sharding.mesh_shape = (1, 4, 2)
  ws = Workspace(config, str(tmp_path / "run"))
  cfg = ws.models.policy
  assert (cfg.family, cfg.vocab_size, cfg.qkv_bias, cfg.num_kv_heads) == ("llama", VOCAB, True, 2)
  params = ws.load_params("pretrain", cfg)
  tokens, mask, positions = _batch()
  with jax.set_mesh(ws.mesh):
    ours = np.asarray(helpers.forward(cfg, params, tokens, mask))
  _assert_close(ours, _theirs(model, tokens, mask, positions), mask)
  tok = ws.tokenizer()
  assert isinstance(tok, hf_tokenizer.HfTokenizer)
  assert tok.eos_id == tok._tk.token_to_id("<|im_end|>")  # pylint: disable=protected-access
  # The "pretrain" stage exports back as the same model, with the tokenizer beside it.
  out = hf.export_stage(ws, "pretrain", str(tmp_path / "export"))
  again = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  _assert_close(ours, _theirs(again, tokens, mask, positions), mask)
  ref_tok = transformers.AutoTokenizer.from_pretrained(out)
  assert ref_tok.eos_token_id == tok.eos_id and again.config.pad_token_id == tok.pad_id


def test_hf_path_refuses_missing_directory():
  assert hf.hf_path("") is None and hf.hf_path("/not/hf") is None
  with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
    hf.hf_path("hf:/does/not/exist")


def test_configs_have_the_hf_keys():
  config = helpers.config("sft")
  assert config.model.init == "" and isinstance(config.data.tokenizer_path, str)
  assert isinstance(config, ml_collections.ConfigDict)


def test_docs_examples_parse():
  """Every JSON example line of docs/hf.md reads in its format; the stated rankings hold."""
  doc = os.path.join(os.path.dirname(__file__), "..", "docs", "hf.md")
  lines = [line for line in open(doc).read().splitlines() if line.startswith("{")]
  comparisons, demos = [], []
  for line in lines:
    obj = json.loads(line)
    if "messages" in obj or "response" in obj:
      demos.append(data_lib.validate_record(obj, "demonstrations"))
    elif isinstance(obj.get("prompt"), list) and "chosen" not in obj:
      data_lib.validate_record(obj, "prompts")
    else:
      comparisons.append(data_lib.validate_record(obj, "comparisons"))
  assert len(comparisons) == 12 and len(demos) == 3
  assert [c["ranking"] for c in comparisons[-3:]] == [[1, 0, 2], [1, 1, 0], [0, 1, 1]]


@pytest.mark.slow
def test_pipeline_runs_from_an_imported_checkpoint(tmp_path):
  """The common case of one's own data: a Qwen2 checkpoint with its tokenizer, your
  demonstrations and comparisons, and no pretraining file (the world's corpus fills it, for
  SFT's pretraining mix). The pretrain stage is skipped, nothing is labelled, SFT starts from the
  imported weights and the RM trains on your comparisons. (colabs/hf_model.ipynb labels with
  the world's labelers from an imported model.)"""
  from instructgpt_jax import pipeline  # pylint: disable=import-outside-toplevel
  from instructgpt_jax.workspace import Workspace  # pylint: disable=import-outside-toplevel

  path = str(tmp_path / "qwen2")
  _hf_model("qwen2").save_pretrained(path)
  _write_tokenizer(path)
  world_demos = Workspace(helpers.config("rm"), str(tmp_path / "world")).jsonl("demonstrations")
  with open(world_demos, encoding="utf-8") as f:
    demos = [json.loads(line) for line in f][:120]
  own_demos, own_comparisons = tmp_path / "demos.jsonl", tmp_path / "comparisons.jsonl"
  own_demos.write_text("".join(json.dumps(d) + "\n" for d in demos))
  # The demonstration ranked above its own first word.
  comparisons = [
    {
      "prompt": d["prompt"],
      "responses": [d["response"], d["response"].split()[0]],
      "ranking": [0, 1],
      "user_id": d["user_id"],
    }
    for d in demos
  ]
  own_comparisons.write_text("".join(json.dumps(c) + "\n" for c in comparisons))
  config = helpers.config("rm")
  config.model.init = "hf:" + path
  config.data.update(
    prompt_len=160,
    response_len=48,
    demonstrations_jsonl=str(own_demos),
    comparisons_jsonl=str(own_comparisons),
  )
  config.sft.update(batch_size=8)
  ws = Workspace(config, str(tmp_path / "run"))
  summaries = pipeline.run(ws, "rm")
  assert summaries["pretrain"] == {"init": config.model.init}
  assert not os.path.exists(ws.stage_dir("pretrain"))
  assert 0 < summaries["sft"]["examples"] <= len(demos) and summaries["sft"]["steps"] > 0
  assert summaries["sft"]["pretrain_rows"] > 0  # From the world's corpus.
  label = summaries["label"]
  assert (label["source"], label["comparisons"]) == (str(own_comparisons), len(demos))
  assert 0 < summaries["rm"]["comparisons"] <= len(demos)
  # SFT moved away from the imported weights, which it started from.
  cfg = ws.models.policy
  base, sft = ws.load_params("pretrain", cfg), ws.load_params("sft", cfg)
  emb = lambda p: np.asarray(p["token_embed"]["embedding"])
  assert emb(base).shape == emb(sft).shape and not np.allclose(emb(base), emb(sft))
  assert np.abs(emb(base) - emb(sft)).max() < 0.5


@pytest.mark.slow
def test_hf_notebook_runs_on_a_random_checkpoint(tmp_path):
  """colabs/hf_model.ipynb imports a small random-weight Qwen2 checkpoint with its tokenizer and
  runs SFT, labelling, the RM, PPO-ptx and the evaluation on the built-in world (issue 11,
  item 6)."""
  import nbformat  # pylint: disable=import-outside-toplevel
  from nbclient import NotebookClient  # pylint: disable=import-outside-toplevel

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = str(tmp_path / "qwen2")
  _hf_model("qwen2").save_pretrained(path)
  _write_tokenizer(path)
  nb = nbformat.read(os.path.join(root, "colabs", "hf_model.ipynb"), as_version=4)
  params = nb.cells[1]
  assert "CHECKPOINT = " in params.source
  params.source = (
    # The world's few-shot prefix takes ~270 tokens of this near-byte-level tokenizer.
    f"CHECKPOINT = {path!r}\nPRESET = 'tiny'\nPROMPT_LEN, RESPONSE_LEN = 320, 48\n"
    f"PPO_ITERATIONS = 2\nWORKDIR = {str(tmp_path / 'run')!r}"
  )
  os.environ.pop("MPLBACKEND", None)  # The kernel's inline backend renders the figure.
  NotebookClient(
    nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": root}}
  ).execute()
  report = json.load(open(tmp_path / "run" / "report.json"))
  assert {"base", "sft", "ppo_ptx"} <= set(report["policies"])
  images = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
    if "image/png" in o.get("data", {})
  ]
  assert images

"""Stage "rm_base": the reward model's own base model (paper C.2, 3.5), and the RM's model shape.

The paper's one 6B reward model served policies of 1.3B, 6B and 175B parameters; it started from
GPT-3 pretrained on the same web text and then fine-tuned on public NLP data sets (ARC, BoolQ,
DROP, MultiNLI, RACE, ...). Here the RM-sized model is pretrained on the world's pretraining text
and then fine-tuned (response-only LM loss) on the world's "public NLP tasks"
(`nlp_tasks.jsonl`: true/false statements, does the passage support this, short QA), and last
on the demonstrations with the policy's SFT recipe (the paper's RM started from the SFT model,
Sec. 3.5). It depends on nothing but the data and the tokenizer, so one `rm_base` serves every
policy.

The RM's model shape lives in `rm.model` (overrides on top of `config.model`); it is made here,
before `configs/rm.py` adds the RM's training settings, because this stage trains that model
first. The value function starts from the RM, so it has the same shape.
Usage: `--config=configs/rm_base.py[:preset]`.
"""

import ml_collections

from configs import common, label

# The RM's model, by preset: overrides of `config.model` (empty = the policy's shape).
# small: the policy's shape (4 x 192). Fluency needed the larger policy (docs/findings.md), and
#   a second, larger base model pretrained beside it would cost ~7 more minutes on 2 CPU cores,
#   past the 30-minute budget; so the RM starts from the policy's SFT model (rm.init_from in
#   configs/rm.py), as the paper's Sec. 3.5 describes, and this stage is skipped.
# tiny: one more layer than the 2 x 64 policy, so the tests see an RM shaped unlike the policy
#   at almost no cost.
# gpt2 / gpt3_*: the paper used one 6B RM for every policy; the gpt3 presets take the 6B shape.
_GPT3_6B = {
  k: common.MODEL_SHAPES["gpt3_6b"][k] for k in ("num_layers", "d_model", "num_heads", "d_ff")
}
RM_MODEL_OVERRIDES: dict[str, dict] = {
  "tiny": dict(num_layers=3),
  "small": {},  # The policy's 4 x 192; the RM starts from its SFT model (configs/rm.py).
  "gpt2": {},
  "gpt3_1.3b": _GPT3_6B,
  "gpt3_6b": {},
  "gpt3_175b": _GPT3_6B,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = label.get_config(arg)
  c.stage = "rm_base"
  # The RM's (and value function's) model: any key of `config.model`; `model_configs.resolve`
  # applies it. Override e.g. `--config.rm.model.num_layers=6`.
  c.rm = ml_collections.ConfigDict(dict(model=dict(RM_MODEL_OVERRIDES[c.preset])))
  c.rm_base = ml_collections.ConfigDict(
    dict(
      # Pretraining on the same corpus as the policy's base model (configs/pretrain.py).
      steps=800,
      optim=common.optim(2e-3, warmup_steps=50),
      **common.loop(batch_size=32, log_every=50, checkpoint_every=500),
      # Then the response-only LM loss on the NLP tasks (no NLP file: skipped, and said so).
      nlp=ml_collections.ConfigDict(
        dict(
          epochs=2,  # 3,000 tasks; two passes teach the answer format without forgetting text.
          # A passage and its claim run longer than the RM's prompts (data.prompt_len = 48
          # drops about 40 % of them at the tiny vocabulary); the RM-sized model's context
          # holds more.
          prompt_len=96,
          optim=common.optim(1e-3),  # Cosine to 10 %, no warmup, as SFT.
          **common.loop(batch_size=32, log_every=25, checkpoint_every=200),
        )
      ),
      # Then the demonstrations: paper Sec. 3.5 starts the RM "from the SFT model with the
      # final unembedding layer removed". The recipe of configs/sft.py on the RM's shape, so the
      # RM starts from an SFT model of its own size. epochs=0 skips this phase.
      sft=ml_collections.ConfigDict(
        dict(
          epochs=8,  # As the policy's SFT (configs/sft.py): 1,115 demonstrations, 310 steps.
          dropout=0.1,  # Residual dropout in this phase only, as the policy's SFT.
          pretrain_mix=0.1,  # Paper C.3: 10 % pretraining rows, as the policy's SFT.
          optim=common.optim(1e-3),  # Cosine to 10 %, no warmup (paper C.1), as SFT.
          **common.loop(batch_size=32, log_every=25, checkpoint_every=200),
        )
      ),
    )
  )
  if c.preset == "tiny":
    c.rm_base.steps = 40
    c.rm_base.optim.lr = 3e-3
    c.rm_base.optim.warmup_steps = 10
    c.rm_base.update(common.loop(batch_size=16, log_every=10, checkpoint_every=30))
    c.rm_base.nlp.epochs = 1
    c.rm_base.nlp.update(common.loop(batch_size=16, log_every=10, checkpoint_every=20))
    c.rm_base.sft.epochs = 1  # As tiny's policy SFT.
    c.rm_base.sft.dropout = 0.0
    c.rm_base.sft.update(common.loop(batch_size=16, log_every=10, checkpoint_every=20))
  return c

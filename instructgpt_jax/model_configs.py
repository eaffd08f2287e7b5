"""Every model of a run, resolved once from the config: the one place model configs are made.

The policy (`config.model`, or an imported checkpoint's shape with `model.init = "hf:/dir"`),
the reward model's trunk as a language model (the policy's shape with the overrides of
`rm.model`, from configs/rm_base.py; the `rm_base` stage trains it), and that trunk with the
scalar head (the reward model, with `rm.likelihood`'s term if set, and the value function, which
starts from it). The workspace
resolves them when it is made (`Workspace.models`); stages, tools and exports read them there.
"""

from __future__ import annotations

import dataclasses

import ml_collections
from absl import logging

from instructgpt_jax import hf
from instructgpt_jax import model as model_lib

# The models a reward model can start from (`rm.init_from`): the stage whose parameters it loads.
RM_INIT_FROM = ("rm_base", "sft", "pretrain")


@dataclasses.dataclass(frozen=True)
class ModelConfigs:
  """The run's models. Stage directories map to them through `for_stage`."""

  policy: model_lib.ModelConfig  # LM: pretrain, SFT, the PPO policies and their reference.
  rm_trunk: model_lib.ModelConfig  # LM of the RM's shape: what rm_base trains.
  reward: model_lib.ModelConfig  # `rm_trunk` with the scalar head: the RM.
  rm_init_from: str  # The stage whose trunk the RM starts from (RM_INIT_FROM).

  @property
  def value(self) -> model_lib.ModelConfig:
    """The value function starts from the RM's parameters, so it has the RM's shape."""
    return self.reward

  @property
  def rm_init(self) -> model_lib.ModelConfig:
    """The LM shape of the stage the RM starts from."""
    return self.rm_trunk if self.rm_init_from == "rm_base" else self.policy

  def for_stage(self, stage: str) -> model_lib.ModelConfig:
    """The model of a stage directory's parameters: "rm" and "rm/member_<i>" are the RM,
    "rm_base" and its phases the RM's trunk, every other stage (pretrain, sft, ppo/<variant>)
    the policy."""
    top = stage.split("/")[0]
    if top == "rm":
      return self.reward
    if top == "rm_base":
      return self.rm_trunk
    return self.policy


def resolve(config: ml_collections.ConfigDict) -> ModelConfigs:
  """The run's models from its config; raises, with the fix, on a `rm.model` key that is not a
  model setting or an `rm.init_from` whose model has another shape than the RM.

  With `model.init = "hf:/dir"` the policy takes the checkpoint's shape and the RM starts from
  SFT's trunk with the policy's shape (`rm.model` unused): the RM-sized base that the pipeline
  pretrains on the built-in world has no counterpart for a real model, and the paper's RM could
  start from SFT (C.2).
  """
  fields = config.model.to_dict()
  init = fields.pop("init", "")  # Where the weights come from (Workspace.hf_base), not the shape.
  rm_section = config.get("rm") or {}
  overrides = dict(rm_section.get("model") or {})
  init_from = rm_section.get("init_from", "rm_base")  # Absent before configs/rm.py.
  path = hf.hf_path(init)
  if path:
    fields.update(hf.model_fields(path))
    if init_from == "rm_base" or overrides:
      logging.warning(
        "model.init=%s: the reward model starts from SFT (rm.init_from='sft', rm.model "
        "unused); the rm_base stage is skipped.",
        init,
      )
    overrides, init_from = {}, "sft"
  policy = model_lib.ModelConfig.from_dict(fields)
  valid = sorted(set(config.model.keys()) - {"init"})
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise ValueError(
      f"config.rm.model sets {unknown}, which are not model settings; valid keys: {valid}."
    )
  rm_trunk = policy.replace(**overrides)
  if init_from not in RM_INIT_FROM:
    raise ValueError(f"rm.init_from={init_from!r} is not one of {list(RM_INIT_FROM)}.")
  if init_from != "rm_base" and policy != rm_trunk:
    raise ValueError(
      f"rm.init_from={init_from!r} starts the RM from the policy's model, but rm.model "
      f"{overrides} gives the RM another shape ({rm_trunk.num_layers} x {rm_trunk.d_model} "
      f"against the policy's {policy.num_layers} x {policy.d_model}). Use "
      "rm.init_from='rm_base', or set rm.model's keys to the policy's values."
    )
  return ModelConfigs(
    policy=policy,
    rm_trunk=rm_trunk,
    reward=rm_trunk.replace(head="scalar", reward_likelihood=rm_section.get("likelihood", "none")),
    rm_init_from=init_from,
  )

"""The package's shape: stages never import stages, and a new setting is one edit."""

import ast
import os

import pytest

from tests import helpers

PACKAGE = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "instructgpt_jax"
)
STAGE_MODULES = {"pretrain", "sft", "label", "rm_base", "rm", "ppo", "evaluate"}
# The entry point and the pipeline run stages; nothing else may import one.
MAY_IMPORT_STAGES = {"pipeline", "main"}


def _imported_modules(path: str) -> set[str]:
  """Names of instructgpt_jax modules a file imports (top level or inside functions)."""
  tree = ast.parse(open(path, encoding="utf-8").read())
  names = set()
  for node in ast.walk(tree):
    if (
      isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("instructgpt_jax")
    ):
      if node.module == "instructgpt_jax":
        names.update(alias.name for alias in node.names)
      else:
        names.add(node.module.split(".")[-1])
    elif isinstance(node, ast.Import):
      names.update(
        a.name.split(".")[-1] for a in node.names if a.name.startswith("instructgpt_jax.")
      )
  return names


def test_no_module_imports_a_stage_module_except_pipeline_and_main():
  offenders = {}
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if not f.endswith(".py"):
        continue
      name = f[:-3]
      if root == PACKAGE and name in MAY_IMPORT_STAGES:
        continue
      imported = _imported_modules(os.path.join(root, f)) & STAGE_MODULES
      if imported:
        offenders[os.path.relpath(os.path.join(root, f), PACKAGE)] = sorted(imported)
  assert not offenders, f"modules importing stage modules: {offenders}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
  path = tmp_path / "m.py"
  path.write_text("def f():\n  from instructgpt_jax import rm, scoring\n")
  assert _imported_modules(str(path)) == {"rm", "scoring"}


def test_a_new_ppo_setting_is_one_edit_in_the_config():
  """PPO's static settings carry the whole frozen `config.ppo` section: a setting added to
  configs/ppo.py reaches every PPO function without a hand-kept copy (PPOSettings.from_config,
  presets and the benchmark each needed an edit before)."""
  from instructgpt_jax import model_configs, ppo  # pylint: disable=import-outside-toplevel

  config = helpers.config("ppo")
  config.ppo.my_new_setting = 0.5  # What a researcher adds to configs/ppo.py.
  config.lock()  # As main's flags give it.
  models = model_configs.resolve(config)
  s = ppo.make_settings(config, models, eos_id=1, pad_id=0, variant="ppo")
  assert s.ppo.my_new_setting == 0.5
  # Every key but kl_coef, whose value in use is PPOState.kl_coef (the controller changes it).
  assert set(s.ppo.keys()) == set(config.ppo.keys()) - {"kl_coef"}
  with pytest.raises(AttributeError, match="kl_coef"):
    s.ppo.kl_coef  # noqa: B018 (the read must fail, not return the initial value)
  ptx = ppo.make_settings(config, models, 1, 0, "ppo_ptx").ppo.ptx_coef
  assert s.ppo.ptx_coef == 0.0 and ptx == config.ppo.ptx_coef == 27.8


def test_the_checker_knows_every_stage_module():
  from instructgpt_jax import pipeline  # pylint: disable=import-outside-toplevel

  assert set(pipeline.STAGE_MODULES.values()) == STAGE_MODULES

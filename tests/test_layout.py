"""The package's shape: stages never import stages, and a new setting is one edit."""

import ast
import os

import pytest

from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "instructgpt_jax")
STAGE_MODULES = {"pretrain", "sft", "label", "rm_base", "rm", "ppo", "dpo", "evaluate"}
# The entry point and the pipeline run stages; nothing else may import one.
MAY_IMPORT_STAGES = {"instructgpt_jax.pipeline", "instructgpt_jax.main"}
TOOLS = "instructgpt_jax.tools"
# main is the entry point, not library: `--config.dry_run=True` dispatches to the dry-run tool.
MAY_IMPORT_TOOLS = {"instructgpt_jax.main"}
SIM = "instructgpt_jax.sim"


def _module_name(path: str, root: str = ROOT) -> str:
  """`instructgpt_jax/sim/files.py` -> "instructgpt_jax.sim.files" (a package: its name)."""
  name = os.path.relpath(path, root)[: -len(".py")].replace(os.sep, ".")
  return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _modules(package: str = PACKAGE, root: str = ROOT) -> dict[str, str]:
  """Every module of the package: dotted name -> file."""
  return {
    _module_name(os.path.join(d, f), root): os.path.join(d, f)
    for d, _, files in os.walk(package)
    for f in files
    if f.endswith(".py")
  }


def _imports(path: str, known: set[str], root: str = ROOT) -> set[str]:
  """The modules of `known` a file imports, at the top level or inside functions; `from pkg
  import name` counts as `pkg.name` where that is a module, else as `pkg`."""
  name = _module_name(path, root)
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # Relative: from the file's package, `level - 1` packages up.
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
      found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
  return found & known


def _import_graph(package: str = PACKAGE, root: str = ROOT) -> dict[str, set[str]]:
  modules = _modules(package, root)
  return {name: _imports(path, set(modules), root) - {name} for name, path in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of `graph` as [a, b, ..., a], or None: a depth-first search in which an
  edge back to a module still on the stack closes a cycle."""
  state: dict[str, str] = {}  # "open" while on the stack, then "done".
  stack: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt) :] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_no_module_imports_a_stage_module_except_pipeline_and_main():
  stages = {f"instructgpt_jax.{m}" for m in STAGE_MODULES}
  offenders = {
    name: sorted(imported & stages)
    for name, imported in _import_graph().items()
    if name not in MAY_IMPORT_STAGES and imported & stages
  }
  assert not offenders, f"modules importing stage modules: {offenders}"


def test_no_library_module_imports_a_tool():
  def is_tool(name: str) -> bool:
    return name == TOOLS or name.startswith(TOOLS + ".")

  offenders = {
    name: sorted(filter(is_tool, imported))
    for name, imported in _import_graph().items()
    if not is_tool(name) and name not in MAY_IMPORT_TOOLS and any(map(is_tool, imported))
  }
  assert not offenders, f"library modules importing tools: {offenders}"


def test_the_simulator_imports_nothing_of_the_training_stack():
  offenders = {
    name: sorted(m for m in imported if not m.startswith(SIM))
    for name, imported in _import_graph().items()
    if name.startswith(SIM) and any(not m.startswith(SIM) for m in imported)
  }
  assert not offenders, f"sim/ modules importing the rest of instructgpt_jax: {offenders}"


def test_no_import_cycle():
  cycle = _find_cycle(_import_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checker_sees_imports_inside_functions_and_cycles(tmp_path):
  pkg = tmp_path / "instructgpt_jax"
  (pkg / "sim").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sim" / "__init__.py").write_text("")
  (pkg / "a.py").write_text("from instructgpt_jax import b\n")
  (pkg / "b.py").write_text("def f():\n  from instructgpt_jax.sim import c\n")
  (pkg / "sim" / "c.py").write_text("from . import d\nimport instructgpt_jax.a\n")
  (pkg / "sim" / "d.py").write_text("from instructgpt_jax.sim.c import x\n")
  graph = _import_graph(str(pkg), str(tmp_path))
  assert graph["instructgpt_jax.b"] == {"instructgpt_jax.sim.c"}
  assert graph["instructgpt_jax.sim.c"] == {"instructgpt_jax.sim.d", "instructgpt_jax.a"}
  assert _find_cycle(graph) == [
    "instructgpt_jax.a",
    "instructgpt_jax.b",
    "instructgpt_jax.sim.c",
    "instructgpt_jax.a",
  ]
  graph["instructgpt_jax.sim.c"].discard("instructgpt_jax.a")
  assert _find_cycle(graph) == [
    "instructgpt_jax.sim.c",
    "instructgpt_jax.sim.d",
    "instructgpt_jax.sim.c",
  ]
  graph["instructgpt_jax.sim.d"].clear()
  assert _find_cycle(graph) is None


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


def test_every_seed_offset_is_named_in_the_seeds_table():
  """A stage reads its random streams by name (`seeds.of`), never as `config.seed + 23`."""
  import re  # pylint: disable=import-outside-toplevel

  from instructgpt_jax import seeds  # pylint: disable=import-outside-toplevel

  literal = re.compile(r"config\.seed\s*\+\s*\d")
  offenders = []
  for name, path in _modules().items():
    with open(path, encoding="utf-8") as f:
      for i, line in enumerate(f, 1):
        if literal.search(line):
          offenders.append(f"{name}:{i}: {line.strip()}")
  assert not offenders, offenders
  # Stages of the same kind share an initial key on purpose; data and step streams never do.
  streams = {k: v for k, v in seeds.OFFSETS.items() if not k.endswith(".init")}
  assert len(set(streams.values())) == len(streams)

"""Writing a world's pools to the user-facing JSONL files, and rebuilding a world from them.

:func:`write_world` writes one ``<name>.jsonl`` per record list of ``world.files()`` (pretraining
text, demonstrations, PPO prompts, RM prompts, eval prompts; the ``paper`` world adds
``nlp_tasks``) and ``world.json`` (which world, its seed and sizes, the counts), in the formats of
DESIGN.md.  :func:`load_world` rebuilds the world that wrote a directory, so every prompt of its
files can be scored.  ``world.json`` of the ``knowledge`` world has no ``world`` key (the files of
that world are byte for byte what they were before the ``paper`` world existed).
"""

from __future__ import annotations

import json
import os
from typing import Any

from instructgpt_jax.sim import knowledge, paper

WORLDS = {knowledge.NAME: knowledge, paper.NAME: paper}


def make_world(name: str, seed: int, scale: float = 1.0) -> Any:
  """The world ``name`` ("paper" or "knowledge") of ``seed``, every count times ``scale``."""
  if name not in WORLDS:
    raise ValueError(f"Unknown world {name!r}; choose one of {sorted(WORLDS)}.")
  return WORLDS[name].World.from_seed(seed, scale=scale)


def load_world(out_dir: str) -> Any:
  """The world that :func:`write_world` wrote into ``out_dir`` (reads its world.json)."""
  with open(os.path.join(out_dir, "world.json")) as f:
    meta = json.load(f)
  module = WORLDS[meta.get("world", knowledge.NAME)]
  return module.World(int(meta["seed"]), module.WorldSizes(**meta["sizes"]))


def write_world(out_dir: str, world: Any) -> dict[str, str]:
  """Writes ``world``'s JSONL files and world.json into ``out_dir``; returns the paths by name
  (the file names without ``.jsonl``, and "world")."""
  files = world.files()
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  for name, records in files.items():
    paths[name] = os.path.join(out_dir, f"{name}.jsonl")
    with open(paths[name], "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
  paths["world"] = os.path.join(out_dir, "world.json")
  meta = {**world.meta(), "counts": {k: len(v) for k, v in files.items()}}
  with open(paths["world"], "w") as f:
    json.dump(meta, f, indent=1)
  return paths

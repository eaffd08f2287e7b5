"""Redraws a run's pictures into `<workdir>/plots/` (instructgpt_jax.plots says which).

python -m instructgpt_jax.tools.plots --workdir=DIR
"""

from __future__ import annotations

import os

from absl import app, flags

from instructgpt_jax import plots

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's workdir (e.g. runs/small).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value or not os.path.isdir(_WORKDIR.value):
    raise app.UsageError(f"--workdir={_WORKDIR.value!r} is not a directory.")
  paths = plots.draw_all(_WORKDIR.value)
  if not paths:
    raise app.UsageError(f"Nothing to draw in {_WORKDIR.value}: no metrics.jsonl or report.json.")
  print("\n".join(paths))


if __name__ == "__main__":
  app.run(main)

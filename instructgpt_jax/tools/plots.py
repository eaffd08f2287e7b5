"""Redraws a run's pictures into `<workdir>/plots/` (instructgpt_jax.plots says which).

python -m instructgpt_jax.tools.plots --workdir=DIR
"""

from __future__ import annotations

import os

from absl import app, flags

from instructgpt_jax import plots


def _main(argv: list[str], workdir: str | None) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not workdir or not os.path.isdir(workdir):
    raise app.UsageError(f"--workdir={workdir!r} is not a directory.")
  paths = plots.draw_all(workdir)
  if not paths:
    raise app.UsageError(f"Nothing to draw in {workdir}: no metrics.jsonl or report.json.")
  print("\n".join(paths))


def main() -> None:
  """The command line (its flag is defined here, not on import)."""
  workdir = flags.DEFINE_string("workdir", None, "A run's workdir (e.g. runs/small).")
  app.run(lambda argv: _main(argv, workdir.value))


if __name__ == "__main__":
  main()

"""What the terminal shows: our own lines, not the libraries' INFO logs."""

from __future__ import annotations

import logging as py_logging

from absl import flags, logging


class _Plain(py_logging.Formatter):
  """Log records as "warning: <message>": what to do, without timestamp, thread id and file."""

  def format(self, record: py_logging.LogRecord) -> str:
    return f"{record.levelname.lower()}: {record.getMessage()}"


def quiet_libraries() -> None:
  """Library INFO logs (orbax, tfds, XLA) and progress bars off unless `--verbosity` is given;
  warnings still show, as one plain line each (absl's format with `--verbosity`)."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
    logging.get_absl_handler().setFormatter(_Plain())
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  tfds.disable_progress_bar()
  # tfds warns about the custom config of every builder we define; nothing for a user to do.
  logging.get_absl_handler().addFilter(
    lambda record: "Using custom data configuration" not in record.getMessage()
  )

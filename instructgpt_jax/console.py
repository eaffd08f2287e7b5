"""What the terminal shows: our own lines, not the libraries' INFO logs."""

from __future__ import annotations

from absl import flags, logging


def quiet_libraries() -> None:
  """Library INFO logs (orbax, tfds, XLA) and progress bars off unless `--verbosity` is given;
  warnings still show."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  tfds.disable_progress_bar()
  # tfds warns about the custom config of every builder we define; nothing for a user to do.
  logging.get_absl_handler().addFilter(
    lambda record: "Using custom data configuration" not in record.getMessage()
  )

"""What every reader of the user-facing data files shares: how many responses a comparison may
rank, and the error a malformed file raises.

data.py (the JSONL formats, hygiene, tfds builders, batching) and preferences.py (the public
preference formats it also reads) both build on this module, so neither imports the other's
definitions back: data imports preferences, preferences imports only this.
"""

from __future__ import annotations

MIN_RESPONSES, MAX_RESPONSES = 2, 9  # K per comparison (the paper uses 4..9)


class DataError(ValueError):
  """A user-facing data file is malformed; the message names file, line and cause."""

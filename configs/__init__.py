"""ml_collections config files, one per stage: `--config=configs/<stage>.py[:preset]`."""

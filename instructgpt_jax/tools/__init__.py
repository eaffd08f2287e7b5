"""Tools that drive the library from outside: the benchmark (`bench`), the dry run (`dry_run`,
also `--config.dry_run=True` of main), the Hugging Face export CLI (`export_hf`), the reward
model's error breakdown (`breakdown`), the upstream figures of the built-in world (`upstream`)
and the run's pictures (`plots`). No library module imports a tool (tests/test_layout.py);
main, the entry point, dispatches to the dry run.
"""

"""The trainer's settings (config.py) and helpers: loaders, evaluation, checkpoints, ranks,
what a run writes."""

"""The trainer's settings (config.py) and parts: the optimization step, loaders, evaluation,
checkpoints, ranks, what a run writes."""

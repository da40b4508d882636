"""Training: the readable loop (`loop.py`, the only module importing accelerate), its config,
checkpoints (resume) and learning-rate schedules."""

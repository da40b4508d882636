"""Masks: which entries of which weights a method touches (sparse fine-tuning trains them,
pruning zeroes the rest). `mask.py` is the shared container and budget arithmetic; each
selection method lives in its own module and registers itself (kind "mask")."""

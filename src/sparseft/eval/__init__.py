"""Evaluation: task metrics (NER entity F1, accuracy/macro-F1, perplexity) and model cost."""

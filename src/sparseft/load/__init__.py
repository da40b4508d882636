"""Loading: models (HF hub ids, local folders, embedded aliases) and data (readers + tokenization)."""

"""Demo helpers for the quickstart: small synthetic data sets that need no download."""

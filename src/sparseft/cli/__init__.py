"""Command line: `sparseft <verb>`; verbs mirror the recipe stages (train, eval, run, demo)."""

"""Benchmark experiments: name -> recipe, overrides, the data they need, and a description.

Subsets are fixed and stated in the description (e.g. `data.train_limit=2000` = first 2000
training sentences in file order), so anyone rerunning gets the same data.
"""

EXPERIMENTS: dict[str, dict] = {
    "conll2003_full": {
        "recipe": "recipes/minilm_conll2003_full.yaml",
        "needs": ["../shared/data/conll2003/eng.train"],
        "description": "MiniLM full fine-tuning, CoNLL-2003 full train (14,041 sent.), dev = eng.testa",
    },
    "banking77_full": {
        "recipe": "recipes/minilm_banking77_full.yaml",
        "needs": ["../shared/data/banking77/train.csv"],
        "description": "MiniLM full fine-tuning, BANKING77 train minus a seeded 10% held-out slice (dev)",
    },
}

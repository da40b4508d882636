"""Sparse attention for transformers models: patterns (config.py, pattern.py), the blocked O(L*w)
kernel (kernel.py), transformers registration (interface.py), `sparsify_attention_` (apply.py),
the recipe stage (stage.py) and the windowed KV cache for generation (cache.py)."""

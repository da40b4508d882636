"""Compression: transforms that make a trained model smaller or faster.

  * `compress.prune`    - zero weights (unstructured, N:M) or physically remove heads / FFN
                          neurons / layers (structured); one-shot or gradual, see docs/pruning.md.
  * `compress.quantize` - lower-precision weights (its own sub-package).

Every method is a config dataclass plus an in-place verb (`prune_(model, cfg)`,
`quantize_(model, cfg)`) dispatched on the config's type through `sparseft.registry`.
Nothing heavy is imported here.
"""

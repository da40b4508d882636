"""sparseft: sparse fine-tuning and sparse compression of transformer language models.

The package follows the data flow of a run:
    load (models, data) -> masks -> train -> compress (prune, quantize) -> eval -> export -> report
with `config` (dataclass configs, targets, recipes), `registry` (named methods) and `cli`.

Only light imports happen here so that `import sparseft` stays fast; heavy modules (torch,
transformers) are imported by the submodules that need them.
"""

__version__ = "0.1.0"

from sparseft.hf_registration import install as _install_hf_quantizer  # noqa: E402

_install_hf_quantizer()  # "sparseft" quantizer for from_pretrained, registered lazily (no torch import here)

__all__ = ["__version__"]

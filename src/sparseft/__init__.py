"""sparseft: sparse fine-tuning and sparse compression of transformer language models.

The package follows the data flow of a run:
    load (models, data) -> masks -> train -> compress (prune, quantize) -> eval -> export -> report
with `config` (dataclass configs, targets, recipes), `registry` (named methods) and `cli`.

Only light imports happen here so that `import sparseft` stays fast; heavy modules (torch,
transformers) are imported by the submodules that need them. The public names below resolve on
first use (PEP 562 `__getattr__`): `from sparseft import prune_` imports only what prune_ needs.

    from sparseft import load, select_masks, sparse_finetune, prune_, quantize_, export
    from sparseft import MagnitudeMaskConfig, TrainConfig, WandaConfig, RTNConfig
    from sparseft import save_diff, load_diff, apply_diff_, revert_diff_, compose, merge
    from sparseft import SparseFTConfig, SparseFTCallback   # peft method + Trainer callback (needs peft)

`load` and `export` are verbs although `sparseft.load` / `sparseft.export` are also packages:
those two packages are callable modules that forward to `sparseft.api.load` / `sparseft.api.export`
(both package __init__ files are one-line docstrings, so making them callable here is cheap).
"""

import importlib
import types

__version__ = "0.1.0"

from sparseft.hf_registration import install as _install_hf_quantizer  # noqa: E402

_install_hf_quantizer()  # "sparseft" quantizer for from_pretrained, registered lazily (no torch import here)

# public name -> "module:attribute" ("module:" = the module itself). A new verb is one line.
_PUBLIC = {
    # load / export (the packages themselves, made callable below)
    "load": "sparseft.load:", "export": "sparseft.export:", "load_tokenizer": "sparseft.load.model:load_tokenizer",
    # masks
    "select_masks": "sparseft.masks.select:select_masks",
    "MaskConfig": "sparseft.masks.config:MaskConfig",
    "RandomMaskConfig": "sparseft.masks.random:RandomMaskConfig",
    "MagnitudeMaskConfig": "sparseft.masks.magnitude:MagnitudeMaskConfig",
    "FisherMaskConfig": "sparseft.masks.fisher:FisherMaskConfig",
    "LotteryMaskConfig": "sparseft.masks.lottery:LotteryMaskConfig",
    "RegrowMaskConfig": "sparseft.masks.regrow:RegrowMaskConfig",
    "SNRMaskConfig": "sparseft.masks.snr:SNRMaskConfig",
    # training and sparse fine-tuning
    "TrainConfig": "sparseft.train.config:TrainConfig",
    "train": "sparseft.train.loop:train",
    "sparse_finetune": "sparseft.sft.api:sparse_finetune",
    "SparseFTConfig": "sparseft.integrations:SparseFTConfig",        # peft method (needs peft)
    "SparseFTCallback": "sparseft.integrations:SparseFTCallback",    # transformers.Trainer / TRL
    # sparse diffs
    "SparseDiff": "sparseft.export.sparse_diff:SparseDiff",
    "save_diff": "sparseft.export.sparse_diff:save_diff",
    "load_diff": "sparseft.export.sparse_diff:load_diff",
    "apply_diff_": "sparseft.export.sparse_diff:apply_diff_",
    "revert_diff_": "sparseft.export.sparse_diff:revert_diff_",
    "compose": "sparseft.export.sparse_diff:compose",
    "merge": "sparseft.export.sparse_diff:merge",
    # pruning
    "prune_": "sparseft.compress.prune.api:prune_",
    "MagnitudePruneConfig": "sparseft.compress.prune.magnitude:MagnitudePruneConfig",
    "RandomPruneConfig": "sparseft.compress.prune.random:RandomPruneConfig",
    "MovementPruneConfig": "sparseft.compress.prune.movement:MovementPruneConfig",
    "NMPruneConfig": "sparseft.compress.prune.nm:NMPruneConfig",
    "WandaConfig": "sparseft.compress.prune.wanda:WandaConfig",
    "SparseGPTConfig": "sparseft.compress.prune.sparsegpt:SparseGPTConfig",
    "StructuredPruneConfig": "sparseft.compress.prune.structured:StructuredPruneConfig",
    # quantization
    "quantize_": "sparseft.compress.quantize.api:quantize_",
    "RTNConfig": "sparseft.compress.quantize.rtn:RTNConfig",
    "NF4Config": "sparseft.compress.quantize.nf4:NF4Config",
    "KMeansConfig": "sparseft.compress.quantize.kmeans:KMeansConfig",
    "GPTQConfig": "sparseft.compress.quantize.gptq:GPTQConfig",
    "DynamicInt8Config": "sparseft.compress.quantize.dynamic:DynamicInt8Config",
    # low-rank factorization
    "factorize_": "sparseft.compress.factorize.api:factorize_",
    "SVDConfig": "sparseft.compress.factorize.methods:SVDConfig",
    "ASVDConfig": "sparseft.compress.factorize.methods:ASVDConfig",
    "WhitenedSVDConfig": "sparseft.compress.factorize.methods:WhitenedSVDConfig",
    "FisherSVDConfig": "sparseft.compress.factorize.methods:FisherSVDConfig",
    "factorize_": "sparseft.compress.factorize.api:factorize_",   # configs: sparseft.compress.factorize
    # sparse attention
    "sparsify_attention_": "sparseft.attention.apply:sparsify_attention_",
    "SparseAttentionConfig": "sparseft.attention.config:SparseAttentionConfig",
    # sparse experts (MoEfication, upcycling)
    "moefy_": "sparseft.experts.api:moefy_",
    "upcycle_": "sparseft.experts.api:upcycle_",
    "MoEfyConfig": "sparseft.experts.config:MoEfyConfig",
    "UpcycleConfig": "sparseft.experts.config:UpcycleConfig",
    # evaluation and recipes
    "evaluate": "sparseft.eval.evaluate:evaluate",
    "Recipe": "sparseft.config.recipe:Recipe",
    "run": "sparseft.pipeline:run",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'sparseft' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    value = getattr(module, attr) if attr else module
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


class _VerbPackage(types.ModuleType):
    """A package that is also a verb: calling it calls `sparseft.api.<package name>`."""

    def __call__(self, *args, **kwargs):
        from sparseft import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


for _name in ("load", "export"):
    importlib.import_module(f"sparseft.{_name}").__class__ = _VerbPackage
del _name

"""Method-appropriate default learning rates: the one table every entry point reads.

A sparse fine-tuning run trains ~1% of the weights and wants a larger step than full fine-tuning;
LoRA's low-rank factors want larger still. The stage configs take their `lr` default from here
(`TrainConfig`: "train", `SFTConfig`: "sft", `LoRAStageConfig`: "lora"), `sparseft train --lr`
defaults to "the method's value" (`default_lr(method)`, recorded in the run's recipe.yaml) and
`sparseft chat-sft` looks up "chat_<mode>".

    from sparseft.train.defaults import DEFAULT_LR, default_lr
    default_lr("sft")          # 5e-4

The measurement behind each number: benchmarks/sweep_defaults.py (held-out slice of CoNLL-2003
train, MiniLM; never dev or test). See docs/cli.md ("Where defaults live").
"""

from __future__ import annotations

DEFAULT_LR = {
    # full fine-tuning (the `train` stage; also prune_finetune / factorize_finetune, whose configs
    # inherit TrainConfig's default)
    "train": 5e-5,
    # sparse fine-tuning and LoRA: placeholders, set from benchmarks/sweep_defaults.py (lead fills in)
    "sft": 5e-4,
    "lora": 1e-3,
    # chat SFT (`sparseft chat-sft --mode full|sparse|lora`, decoder LMs)
    "chat_full": 2e-5,
    "chat_sparse": 2e-4,
    "chat_lora": 2e-4,
}


def default_lr(method: str) -> float | None:
    """The default learning rate of a training method (a stage name or chat_<mode>); None when the
    table has no entry (e.g. prune_finetune: its config class's `lr` default, TrainConfig's)."""
    return DEFAULT_LR.get(method)

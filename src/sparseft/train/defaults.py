"""Method-appropriate default learning rates: the one table every entry point reads.

A sparse fine-tuning run trains ~1% of the weights and wants a larger step than full fine-tuning;
LoRA's low-rank factors want larger still. The stage configs take their `lr` default from here
(`TrainConfig`: "train", `SFTConfig`: "sft", `LoRAStageConfig`: "lora"), `sparseft train --lr`
defaults to "the method's value" (`default_lr(method)`, recorded in the run's recipe.yaml) and
`sparseft chat-sft` looks up "chat_<mode>".

    from sparseft.train.defaults import DEFAULT_LR, default_lr
    default_lr("sft")          # 3e-3

The measurement behind each number: benchmarks/sweep_defaults.py (held-out slice of CoNLL-2003
train, MiniLM; never dev or test). See docs/cli.md ("Where defaults live").
"""

from __future__ import annotations

DEFAULT_LR = {
    # full fine-tuning (the `train` stage, TrainConfig's default): the best of {5e-5, 1e-4, 2e-4, 5e-4}
    # in benchmarks/sweep_defaults.py, held-out F1 0.595 / 0.758 / 0.822 / 0.816 (records
    # sweep_defaults-20261201T113720.json, -20261201T122650.json)
    "train": 2e-4,
    # recovery fine-tuning of a pruned / factorized model that starts from a fine-tuned one, with
    # distillation (prune_finetune, factorize_finetune): the value of the pruning and factorization
    # recipes. Held-out check for gradual magnitude + KD (docs/pruning.md, "Recovery lr"): best at 50%
    # sparsity (0.920 vs 0.883 at 1e-3), but 90% wants 1e-3 (0.836 vs 0.553), so pass lr there
    "recovery": 1e-4,
    # sparse fine-tuning (fisher, density 1%) and LoRA (same trainable count): the best of the grid
    # {1e-3, 3e-3, 1e-2} in benchmarks/sweep_defaults.py, held-out F1 sft 0.592 / 0.760 / 0.743,
    # LoRA 0.637 / 0.793 / 0.765 (record benchmarks/results/sweep_defaults-20261201T113720.json)
    "sft": 3e-3,
    "lora": 3e-3,
    # chat SFT (`sparseft chat-sft --mode full|sparse|lora`, decoder LMs): the best of a 3-value grid
    # per mode in benchmarks/sweep_chat.py (SmolLM2-135M, Dolly open_qa: 300 train records, response
    # loss on 150 records held out of train.jsonl, never validation), record sweep_chat-20261202T*.json:
    # full {1e-5, 2e-5, 5e-5} -> 2.640 / 2.610 / 2.578; sparse (fisher 1%) {2e-4, 1e-3, 3e-3} ->
    # 2.579 / 2.595 / 2.740; LoRA (same count, rank 3) {2e-4, 1e-3, 3e-3} -> 2.696 / 2.605 / 2.580.
    # Full's and LoRA's best sit at their grids' upper edge, sparse's at its lower edge.
    "chat_full": 5e-5,
    "chat_sparse": 2e-4,
    "chat_lora": 3e-3,
}

# head warm-up of the sft and lora stages (train/head_warmup.py) when the model has a task head:
# steps of head-only AdamW at HEAD_WARMUP_LR before the mask is selected / the adapter is added.
# benchmarks/sweep_defaults.py on the held-out slice (records sweep_head_warmup-20261204T182111.json,
# sweep_head_warmup_lora-20261204T182832.json): fisher 1% 0 / 100 / 300 steps -> 0.761 / 0.783 /
# 0.784 (300 at lr 3e-3: 0.785, a tie), LoRA at the same count 0 / 300 -> 0.793 / 0.817
HEAD_WARMUP_STEPS = 300
HEAD_WARMUP_LR = 1e-3


def default_lr(method: str) -> float | None:
    """The default learning rate of a training method (a stage name or chat_<mode>); None when the
    table has no entry (e.g. prune_finetune: its config class's `lr` default, TrainConfig's)."""
    return DEFAULT_LR.get(method)

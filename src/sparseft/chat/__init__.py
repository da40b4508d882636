"""Chat supervised fine-tuning (DeepSpeed-Chat step 1) for decoder LMs: full, sparse or LoRA.

    formats.py   data formats -> messages; DeepSpeed-Chat --data_split
    template.py  chat template (model's or fallback), assistant-only labels, truncation
    packing.py   several examples per row without crossing labels or attention; collator
    loss.py      response loss (training objective and held-out evaluation)
    generate.py  greedy / sampled replies
    modes.py     full / sparse / LoRA set-up
    data.py      stage `chat_data`;  stage.py: stages `chat_sft`, `chat_eval`
    launch.py    multi-process and DeepSpeed (ZeRO) launch configuration

CLI: `sparseft chat-sft ...` (training) and `sparseft chat MODEL [--diff DIFF]` (interactive).
See docs/chat_sft.md.
"""

from sparseft.chat.formats import FORMATS, detect_format, records_to_conversations, to_messages
from sparseft.chat.generate import GenerateConfig, generate_reply
from sparseft.chat.packing import ChatCollator, pack_features
from sparseft.chat.template import (FALLBACK_TEMPLATE, ChatTemplate, resolve_template, tokenize_conversation,
                                    tokenize_conversations)

__all__ = ["FORMATS", "detect_format", "records_to_conversations", "to_messages", "GenerateConfig",
           "generate_reply", "ChatCollator", "pack_features", "FALLBACK_TEMPLATE", "ChatTemplate",
           "resolve_template", "tokenize_conversation", "tokenize_conversations"]

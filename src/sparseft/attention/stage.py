"""Recipe stage `sparse_attention`: switch the run's model to sparse attention for the stages after it.

The stage takes the fields of `SparseAttentionConfig` flat, e.g.

    - name: attention
      method: sparse_attention
      window: sqrt
      global_tokens: 1        # [CLS]

Put it before `train` to fine-tune with the pattern; a later `save` writes it into config.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sparseft.attention.apply import sparsify_attention_
from sparseft.attention.config import SparseAttentionConfig
from sparseft.registry import register_method


@dataclass
class SparseAttentionStageConfig(SparseAttentionConfig):
    """The stage's fields are SparseAttentionConfig's (its own class, as the registry maps one config
    class to one method)."""


def sparse_attention_stage(ctx, cfg: SparseAttentionStageConfig, name: str) -> None:
    pattern = SparseAttentionConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(SparseAttentionConfig)})
    sparsify_attention_(ctx.model, pattern)
    ctx.report.log(name, {"attention": pattern.to_dict()["_data"], "attn_implementation":
                          ctx.model.config._attn_implementation})


register_method(kind="stage", name="sparse_attention", config_cls=SparseAttentionStageConfig,
                apply_fn=sparse_attention_stage, description="sparse / adaptive-window attention for later stages")

"""Sparse fine-tuning (SFT): train a chosen subset of a model's weights, W = W0 + delta.

    from sparseft.sft import sparse_finetune
    result, diff = sparse_finetune(model, data.train, TrainConfig(...), FisherMaskConfig(density=0.01),
                                   collate_fn=PadCollator(pad_id))

`layer.py` is the memory-lean parametrisation (values [k] + indices [k] per weight), `regrow.py`
the drop/regrow hook, `spiel.py` the SpIEL reselection hook (spiel_ag, spiel_ma), `api.py` the function above, `stage.py` the recipe stage `sft`,
`sharded_select.py` mask selection from per-shard scores under `distributed=fsdp`.
"""

from sparseft.sft.api import sparse_finetune

__all__ = ["sparse_finetune"]

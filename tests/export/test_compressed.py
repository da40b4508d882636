"""Compressed checkpoint: bitmask + packed-integer storage round-trips exactly, loads back into
a working model that predicts the same labels, and is smaller than fp32 on disk."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from sparseft.compress.quantize import (DynamicInt8Config, GPTQConfig, KMeansConfig, NF4Config, RTNConfig,
                                        quantize_)
from sparseft.export.compressed import CONFIG_NAME, export_compressed, load_compressed

LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@pytest.fixture
def ner_model(tiny_bert_dir):
    from sparseft.load.model import load_model

    torch.manual_seed(0)
    return load_model(str(tiny_bert_dir), "ner", labels=LABELS).eval()


def prune_half_(model) -> None:
    """Zero half of every encoder Linear weight (random mask, fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and ".encoder." in f".{name}":
                p.mul_(torch.rand(p.shape, generator=gen) >= 0.5)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(7, 90, (3, 16), generator=torch.Generator().manual_seed(5))
QUANT = [None, RTNConfig(bits=8), RTNConfig(bits=4, symmetric=False, granularity="group", group_size=16),
         RTNConfig(bits=4, granularity="group", group_size=16, targets=["Linear", "Embedding"]),
         NF4Config(block_size=16), KMeansConfig(outlier_fraction=0.02), DynamicInt8Config()]


@pytest.mark.parametrize("sparse", ["auto", "always", "never"])
@pytest.mark.parametrize("qcfg", QUANT, ids=lambda c: type(c).__name__ if c else "fp32")
def test_round_trip_is_exact(ner_model, tmp_path, qcfg, sparse):
    prune_half_(ner_model)
    if qcfg is not None:
        quantize_(ner_model, qcfg)
    before = logits(ner_model, IDS)
    stats = export_compressed(ner_model, tmp_path / "c", sparse=sparse)
    loaded = load_compressed(tmp_path / "c")
    assert torch.equal(logits(loaded, IDS), before)
    assert {type(m).__name__ for m in loaded.modules()} == {type(m).__name__ for m in ner_model.modules()}
    assert (stats["sparse_tensors"] > 0) == (sparse != "never")
    loaded_state, state = loaded.state_dict(), ner_model.state_dict()
    assert loaded_state.keys() == state.keys()
    assert all(torch.equal(loaded_state[k], state[k]) for k in state)  # codes, scales, bitmasked zeros


def test_bitmask_storage_is_exact_and_smaller_for_a_pruned_fp32_model(ner_model, tmp_path):
    dense = export_compressed(ner_model, tmp_path / "dense")
    prune_half_(ner_model)
    sparse = export_compressed(ner_model, tmp_path / "sparse")
    meta = json.loads((tmp_path / "sparse" / CONFIG_NAME).read_text())
    entry = meta["tensors"]["bert.encoder.layer.0.intermediate.dense.weight"]
    assert entry["format"] == "sparse-bitmask"
    assert meta["sparsity_config"]["format"] == "sparse-bitmask"
    assert sparse["weights_bytes"] < dense["weights_bytes"]
    w = load_compressed(tmp_path / "sparse").bert.encoder.layer[0].intermediate.dense.weight
    assert torch.equal(w, ner_model.bert.encoder.layer[0].intermediate.dense.weight)


def test_int8_and_int4_shrink_the_linear_weights(ner_model, tmp_path):
    fp32 = export_compressed(ner_model, tmp_path / "fp32")["weights_bytes"]
    every = ["Linear", "Embedding"]
    int8 = export_compressed(_q(ner_model, RTNConfig(bits=8, targets=every)), tmp_path / "i8")["weights_bytes"]
    int4 = export_compressed(_q(ner_model, RTNConfig(bits=4, granularity="group", group_size=32, targets=every)),
                             tmp_path / "i4")["weights_bytes"]
    assert int8 < 0.4 * fp32 and int4 < 0.75 * int8  # tiny model: scales, LayerNorms, headers weigh in


def _q(model, cfg):
    model = copy.deepcopy(model)
    quantize_(model, cfg)
    return model


def test_loaded_checkpoint_predicts_the_same_labels_on_a_fixture_set(ner_model, tiny_tokenizer, toy_ner_files,
                                                                    tmp_path):
    from sparseft.eval.evaluate import evaluate
    from sparseft.load.data import DataConfig, build_eval_data

    _, dev = toy_ner_files
    data = build_eval_data(DataConfig(task="ner"), tiny_tokenizer, LABELS, str(dev))
    prune_half_(ner_model)
    quantize_(ner_model, RTNConfig(bits=4, granularity="group", group_size=16))
    pad = tiny_tokenizer.pad_token_id
    before = evaluate(ner_model, data, pad_id=pad)
    export_compressed(ner_model, tmp_path / "c", tokenizer=tiny_tokenizer)
    loaded = load_compressed(tmp_path / "c")
    after = evaluate(loaded, data, pad_id=pad)
    keys = [k for k in before if k not in ("eval_seconds",)]
    assert {k: before[k] for k in keys} == {k: after[k] for k in keys}
    assert (tmp_path / "c" / "tokenizer.json").exists()


def test_tied_llama_with_gptq_round_trips(tiny_llama_dir, tmp_path):
    from sparseft.load.model import load_model

    model = load_model(str(tiny_llama_dir), "lm").eval()
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(7, 90, (2, 16), generator=gen),
                "attention_mask": torch.ones(2, 16, dtype=torch.long)} for _ in range(2)]
    quantize_(model, GPTQConfig(bits=4, group_size=16), batches=batches)
    export_compressed(model, tmp_path / "c")
    meta = json.loads((tmp_path / "c" / CONFIG_NAME).read_text())
    assert meta["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    loaded = load_compressed(tmp_path / "c")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(logits(loaded, IDS), logits(model, IDS))


def test_structurally_pruned_model_reloads_with_its_new_sizes(ner_model, tmp_path):
    prune = pytest.importorskip("sparseft.compress.prune")
    prune.prune_(ner_model, prune.StructuredPruneConfig(ffn_sparsity=0.5))
    quantize_(ner_model, DynamicInt8Config())
    export_compressed(ner_model, tmp_path / "c")
    loaded = load_compressed(tmp_path / "c")
    assert loaded.config.intermediate_size == ner_model.config.intermediate_size == 32
    assert torch.equal(logits(loaded, IDS), logits(ner_model, IDS))


def test_clear_errors_for_bad_folders(ner_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a compressed checkpoint"):
        load_compressed(tmp_path)
    export_compressed(ner_model, tmp_path / "c")
    path = tmp_path / "c" / CONFIG_NAME
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        load_compressed(tmp_path / "c")
    meta["tensors"].pop("classifier.bias")
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="missing"):
        load_compressed(tmp_path / "c")
    with pytest.raises(ValueError, match="sparse must be one of"):
        export_compressed(ner_model, tmp_path / "d", sparse="sometimes")

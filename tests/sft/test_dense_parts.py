"""BitFit-style dense parts (biases, norms) beside the sparse entries: counted in the budget,
stored with their base values, bit-exact through apply / revert, restored when training fails."""

from __future__ import annotations

import pytest
import torch

from sft_toys import collate, ner_data, ner_model, train_cfg, weights, write_ner_files
from sparseft.export.sparse_diff import apply_diff_, load_diff, revert_diff_, save_diff
from sparseft.masks.mask import budget_count
from sparseft.masks.select import mask_config, target_parameters
from sparseft.sft import sparse_finetune
from sparseft.sft.dense_parts import dense_part_parameters, parse_dense_parts
from sparseft.sft.stage import SFTConfig


@pytest.fixture(scope="module")
def data(tiny_tokenizer, tmp_path_factory):
    train_file, dev = write_ner_files(tmp_path_factory.mktemp("ner"))
    return ner_data(tiny_tokenizer, train_file, dev)


def test_parts_train_inside_the_budget_and_round_trip_bit_exactly(data, tiny_bert_dir, tiny_tokenizer, tmp_path):
    model = ner_model(tiny_bert_dir, data.labels)
    base = weights(model)
    cfg = mask_config("magnitude", density=0.2)
    n_targeted = sum(p.numel() for p in target_parameters(model, cfg).values())
    parts = dense_part_parameters(model, ["bias", "norm"], skip={"classifier.weight", "classifier.bias"})
    assert parts and all(n.endswith("bias") or "LayerNorm" in n for n in parts)
    assert "classifier.bias" not in parts and "bert.embeddings.LayerNorm.weight" in parts
    _, diff = sparse_finetune(model, data.train, train_cfg(tmp_path / "run"), cfg, collate_fn=collate(tiny_tokenizer),
                              dense_parts=["bias", "norm"])
    assert diff.count == budget_count(n_targeted, density=0.2)            # parts counted in the budget
    assert diff.manifest["dense_part_params"] == sum(p.numel() for p in parts.values())
    assert set(parts) <= set(diff.indices) and set(diff.dense) == {"classifier.weight", "classifier.bias"}
    trained = weights(model)
    assert all(not torch.equal(trained[n], base[n]) for n in ["bert.encoder.layer.0.output.dense.bias",
                                                             "bert.encoder.layer.1.output.LayerNorm.weight"])

    save_diff(diff, tmp_path / "diff")
    fresh = ner_model(tiny_bert_dir, data.labels)
    loaded = load_diff(tmp_path / "diff")
    apply_diff_(fresh, loaded)
    assert all(torch.equal(v, trained[k]) for k, v in weights(fresh).items())
    revert_diff_(fresh, loaded)
    after = weights(fresh)
    assert all(torch.equal(after[n], base[n]) for n in parts)           # biases / norms back to W0


def test_a_failed_run_leaves_the_base_parts_and_a_too_small_budget_is_refused(data, tiny_bert_dir, tiny_tokenizer,
                                                                           tmp_path):
    model = ner_model(tiny_bert_dir, data.labels)
    base = weights(model)
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("stop here")
        return m(**batch).loss

    with pytest.raises(RuntimeError, match="stop here"):
        sparse_finetune(model, data.train, train_cfg(tmp_path / "a"), mask_config("random", density=0.2),
                        collate_fn=collate(tiny_tokenizer), loss_fn=loss_fn, dense_parts=["bias"])
    after = weights(model)
    assert all(torch.equal(after[k], base[k]) for k in base if k.endswith("bias") and not k.startswith("classifier"))
    with pytest.raises(ValueError, match="use up the whole budget"):
        sparse_finetune(model, data.train, train_cfg(tmp_path / "b"), mask_config("random", count=10),
                        collate_fn=collate(tiny_tokenizer), dense_parts=["bias"])


def test_config_and_flag_vocabulary():
    assert parse_dense_parts("bias, norm,bias") == ["bias", "norm"] and parse_dense_parts("") == []
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['heads'\]"):
        SFTConfig(dense_parts="bias,heads")
    from sparseft.cli.main import build_parser
    from sparseft.cli.train_cmd import build_recipe_dict

    args = build_parser().parse_args(["train", "--method", "sft", "--train", "x.conll", "--dense-parts", "bias,norm"])
    assert build_recipe_dict(args)["stages"][0]["dense_parts"] == "bias,norm"

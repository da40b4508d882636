"""Diff folder <-> peft adapter folder, both directions, tested for equality."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")

from peft import PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from sft_toys import collate, ner_data, ner_model, train_cfg, write_ner_files  # noqa: E402
from sparseft.export.sparse_diff import BaseMismatch, apply_diff_, load_diff, save_diff  # noqa: E402
from sparseft.integrations import SparseFTConfig  # noqa: E402
from sparseft.integrations.convert import adapter_to_diff, diff_to_adapter  # noqa: E402
from sparseft.masks.select import mask_config  # noqa: E402
from sparseft.sft import sparse_finetune  # noqa: E402


@pytest.fixture(scope="module")
def trained(tiny_bert_dir, tiny_tokenizer, tmp_path_factory):
    """A diff from sparseft's own sparse_finetune (fisher mask, dense head), saved and reloaded."""
    root = tmp_path_factory.mktemp("convert")
    data = ner_data(tiny_tokenizer, *write_ner_files(root / "data"))
    model = ner_model(tiny_bert_dir, data.labels)
    _, diff = sparse_finetune(model, data.train, train_cfg(root / "run"), mask_config("fisher", density=0.05,
                                                                                      n_batches=2),
                              collate_fn=collate(tiny_tokenizer))
    save_diff(diff, root / "diff")
    return data, load_diff(root / "diff"), root


def assert_same_diff(a, b):
    assert sorted(a.indices) == sorted(b.indices) and sorted(a.dense) == sorted(b.dense)
    for n in a.indices:
        assert torch.equal(a.indices[n], b.indices[n]), n
        assert torch.equal(a.values[n], b.values[n]), n
        assert torch.equal(a.base_values[n], b.base_values[n]), n
        assert tuple(a.shapes[n]) == tuple(b.shapes[n])
    for n in a.dense:
        assert torch.equal(a.dense[n], b.dense[n]), n
    for key in ("base_fingerprint", "fingerprint_tensors", "task", "labels", "mask"):
        assert a.manifest.get(key) == b.manifest.get(key), key


def test_diff_to_adapter_loads_in_peft_and_merges_bit_equal(trained, tiny_bert_dir, tmp_path):
    data, diff, root = trained
    out = diff_to_adapter(root / "diff", tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["README.md", "adapter_config.json",
                                                                          "adapter_model.safetensors"]
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "PeftModel.from_pretrained" in card and str(out) in card
    merged = PeftModel.from_pretrained(ner_model(tiny_bert_dir, data.labels, seed=1), out).merge_and_unload()
    ref = ner_model(tiny_bert_dir, data.labels, seed=1)
    apply_diff_(ref, diff)
    for (n, p), (_, q) in zip(ref.named_parameters(), merged.named_parameters()):
        assert torch.equal(p, q), n
    diff_to_adapter(diff, out)  # sparseft's own adapter folder: replaced by a rerun
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    with pytest.raises(ValueError, match="not written by sparseft"):
        diff_to_adapter(diff, foreign)
    assert (foreign / "todo.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="the input"):  # never over the diff being read, even with overwrite
        diff_to_adapter(root / "diff", root, overwrite=True)
    assert (root / "diff").is_dir()


def test_diff_adapter_diff_round_trip_is_exact(trained, tiny_bert_dir, tmp_path):
    data, diff, root = trained
    out = diff_to_adapter(diff, tmp_path / "adapter")
    back = adapter_to_diff(out, base_model=ner_model(tiny_bert_dir, data.labels))
    assert_same_diff(diff, back)
    save_diff(back, tmp_path / "diff2")
    assert_same_diff(diff, load_diff(tmp_path / "diff2"))
    # without the base: same entries and shapes (from adapter_config.json), no base values
    bare = adapter_to_diff(out)
    assert not bare.base_values and all(torch.equal(bare.values[n], diff.values[n]) for n in diff.indices)
    assert bare.shapes == {n: tuple(s) for n, s in diff.shapes.items()}


def test_adapter_diff_adapter_round_trip_and_wrong_base(tiny_bert_dir, tmp_path):
    model = get_peft_model(ner_model(tiny_bert_dir, ["O", "B-PER", "I-PER"]),
                           SparseFTConfig(density=0.05, mask="random", task_type="TOKEN_CLS"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sparseft_values" in name:
                p.copy_(torch.randn_like(p))
    model.save_pretrained(tmp_path / "a")
    diff = adapter_to_diff(tmp_path / "a", base_model=ner_model(tiny_bert_dir, ["O", "B-PER", "I-PER"]))
    diff_to_adapter(diff, tmp_path / "b")
    a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("a", "b"))
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ca, cb = (json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("a", "b"))
    for key in ("base_fingerprint", "fingerprint_tensors", "task_type", "mask", "shapes"):
        assert ca[key] == cb[key], key

    other = ner_model(tiny_bert_dir, ["O", "B-PER", "I-PER"])
    with torch.no_grad():
        other.bert.encoder.layer[1].output.dense.weight.mul_(2)
    with pytest.raises(BaseMismatch):
        adapter_to_diff(tmp_path / "a", base_model=other)


def test_a_lora_adapter_is_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ValueError, match="not a sparseft adapter"):
        adapter_to_diff(tmp_path)


def test_sparseft_load_reads_diff_and_adapter_folders(trained, tiny_bert_dir, tmp_path):
    import sparseft

    data, diff, root = trained
    want = ner_model(tiny_bert_dir, data.labels, seed=3)
    apply_diff_(want, diff)
    from_diff = sparseft.load(str(root / "diff"))            # base named in the manifest + the diff
    from_adapter = sparseft.load(str(diff_to_adapter(diff, tmp_path / "adapter")))  # base + merged adapter
    torch.manual_seed(5)
    with_diff = sparseft.load(str(tiny_bert_dir), "ner", labels=data.labels, diff=str(root / "diff"))
    for got in (from_diff, from_adapter, with_diff):
        assert got.config.id2label == want.config.id2label
        for (n, p), (_, q) in zip(want.named_parameters(), got.named_parameters()):
            assert torch.equal(p, q), n

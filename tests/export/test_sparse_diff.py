"""Sparse diff files and operations: round trip, base check (fingerprint / base values / force),
compose policies (disjoint composition == sequential application), revert, merge, info."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from sparseft.export.sparse_diff import (BaseMismatch, SparseDiff, apply_diff_, compose, diff_info, fingerprint,
                                         load_diff, merge, revert_diff_, save_diff)

NAMES = ("0.weight", "2.weight")


def base_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def make_diff(model, positions: dict[str, list[int]], seed: int = 1, dense: bool = False) -> SparseDiff:
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    idx = {n: torch.tensor(sorted(p), dtype=torch.long) for n, p in positions.items()}
    vals = {n: torch.randn(len(p), generator=gen) for n, p in positions.items()}
    base = {n: params[n].detach().reshape(-1)[i].clone() for n, i in idx.items()}
    manifest = {"base_model": "toy", "base_fingerprint": fingerprint(model, NAMES), "fingerprint_tensors": list(NAMES)}
    heads = {"2.bias": torch.randn(3, generator=gen)} if dense else {}
    return SparseDiff(idx, vals, {n: tuple(params[n].shape) for n in idx}, base, heads, manifest)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_round_trip_on_disk(tmp_path):
    model = base_model()
    diff = make_diff(model, {"0.weight": [0, 5, 47], "2.weight": [3]}, dense=True)
    save_diff(diff, tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir() if not p.name.startswith(".")) == ["README.md", "diff.safetensors", "manifest.json"]
    with safe_open(str(tmp_path / "d" / "diff.safetensors"), "pt") as f:
        assert f.get_tensor("0.weight::indices").dtype == torch.int32  # compact on disk
    again = load_diff(tmp_path / "d")
    for n in diff.indices:
        assert torch.equal(again.indices[n], diff.indices[n]) and again.indices[n].dtype == torch.int64
        assert torch.equal(again.values[n], diff.values[n]) and torch.equal(again.base_values[n], diff.base_values[n])
    assert torch.equal(again.dense["2.bias"], diff.dense["2.bias"])
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["tensors"]["0.weight"] == {"shape": [8, 6], "count": 3, "dtype": "float32"}
    assert manifest["count"] == 4 and manifest["sparseft_version"]
    info = diff_info(tmp_path / "d")
    assert info["count"] == 4 and info["dense"] == ["2.bias"] and info["size_bytes"] > 0


def test_apply_then_revert_is_exact_and_only_touches_positions():
    model = base_model()
    w0 = state(model)
    diff = make_diff(model, {"0.weight": [1, 2, 30], "2.weight": [0, 23]})
    apply_diff_(model, diff)
    w1 = state(model)
    changed = (w1["0.weight"] != w0["0.weight"]).reshape(-1).nonzero().reshape(-1).tolist()
    assert changed == [1, 2, 30] and torch.equal(w1["0.bias"], w0["0.bias"])
    revert_diff_(model, diff)
    assert all(torch.equal(v, w0[k]) for k, v in state(model).items())


def test_scale_multiplies_deltas():
    a, b = base_model(), base_model()
    diff = make_diff(a, {"0.weight": [4]})
    apply_diff_(a, diff, scale=0.5)
    expected = b.state_dict()["0.weight"].reshape(-1)[4] + 0.5 * diff.values["0.weight"][0]
    assert torch.isclose(a.state_dict()["0.weight"].reshape(-1)[4], expected)


def test_composing_disjoint_diffs_equals_sequential_application():
    seq, once = base_model(), base_model()
    a = make_diff(seq, {"0.weight": [0, 1, 2], "2.weight": [5]}, seed=1)
    b = make_diff(seq, {"0.weight": [3, 4], "2.weight": [6, 7]}, seed=2)
    apply_diff_(seq, a)
    apply_diff_(seq, b)  # accepted without force: base values match at b's positions
    apply_diff_(once, compose([a, b], policy="error"))
    assert all(torch.equal(v, state(once)[k]) for k, v in state(seq).items())


def test_overlap_policies():
    model = base_model()
    a = make_diff(model, {"0.weight": [0, 1]}, seed=1)
    b = make_diff(model, {"0.weight": [1, 2]}, seed=2)
    summed = compose([a, b])  # default "sum"
    assert summed.indices["0.weight"].tolist() == [0, 1, 2]
    assert torch.allclose(summed.values["0.weight"][1], a.values["0.weight"][1] + b.values["0.weight"][0])
    last = compose([a, b], policy="last")
    assert torch.equal(last.values["0.weight"][1], b.values["0.weight"][0])
    assert torch.equal(last.values["0.weight"][0], a.values["0.weight"][0])
    with pytest.raises(ValueError, match="overlap"):
        compose([a, b], policy="error")
    with pytest.raises(ValueError, match="policy"):
        compose([a, b], policy="mean")
    # "sum" equals sequential application up to float rounding at the shared position
    seq, once = base_model(), base_model()
    apply_diff_(seq, a)
    apply_diff_(seq, b, force=True)  # overlap: b's base values no longer match there
    apply_diff_(once, summed)
    assert torch.allclose(state(seq)["0.weight"], state(once)["0.weight"], atol=1e-6)


def test_dense_heads_clash_unless_dropped_or_last():
    model = base_model()
    a, b = make_diff(model, {"0.weight": [0]}, 1, dense=True), make_diff(model, {"0.weight": [9]}, 2, dense=True)
    with pytest.raises(ValueError, match="without_dense"):
        compose([a, b])
    assert not compose([a.without_dense(), b.without_dense()]).dense
    assert torch.equal(compose([a, b], policy="last").dense["2.bias"], b.dense["2.bias"])
    assert a.dense_only().count == 0 and a.dense_only().dense


def test_another_base_is_refused_with_a_clear_message_unless_forced():
    diff = make_diff(base_model(0), {"0.weight": [0, 1, 2]})
    other = base_model(seed=7)
    w = state(other)
    with pytest.raises(BaseMismatch, match="force"):
        apply_diff_(other, diff)
    assert all(torch.equal(v, w[k]) for k, v in state(other).items())  # refused before any write
    apply_diff_(other, diff, force=True)
    assert not torch.equal(state(other)["0.weight"], w["0.weight"])


def test_bf16_copy_of_the_base_is_recognised_by_base_values():
    model = base_model()
    diff = make_diff(model, {"0.weight": [0, 1]})
    half = base_model().to(torch.bfloat16)
    apply_diff_(half, diff)  # fingerprint differs (dtype); base values match after rounding


def test_shape_and_name_errors():
    diff = make_diff(base_model(), {"0.weight": [0]})
    with pytest.raises(ValueError, match="no parameter"):
        apply_diff_(torch.nn.Sequential(torch.nn.Linear(6, 8)), SparseDiff(
            {"9.weight": torch.tensor([0])}, {"9.weight": torch.ones(1)}, {"9.weight": (1, 1)}))
    wide = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.ReLU(), torch.nn.Linear(9, 3))
    with pytest.raises(ValueError, match="shape"):
        apply_diff_(wide, diff)
    with pytest.raises(FileNotFoundError):
        load_diff("/nonexistent/diff")


def test_merge_writes_a_plain_checkpoint(tiny_bert_dir, tmp_path):
    from transformers import BertModel

    model = BertModel.from_pretrained(tiny_bert_dir)
    name = "encoder.layer.0.attention.self.query.weight"
    diff = SparseDiff({name: torch.tensor([0, 7])}, {name: torch.tensor([1.0, -1.0])}, {name: (32, 32)},
                      manifest={"base_model": "tiny", "base_fingerprint": fingerprint(model, [name]),
                                "fingerprint_tensors": [name]})
    merge(model, diff, tmp_path / "merged")
    again = BertModel.from_pretrained(tmp_path / "merged")
    assert torch.equal(again.state_dict()[name], model.state_dict()[name])
    assert json.loads((tmp_path / "merged" / "sparseft_diff.json").read_text())["base_model"] == "tiny"


def test_diffs_fingerprinted_over_different_tensors_compose():
    """E.g. a token-classification diff (no pooler) and a sequence-classification one (pooler)."""
    model = base_model()
    a = make_diff(model, {"0.weight": [0]}, 1)
    b = make_diff(model, {"2.weight": [1]}, 2)
    b.manifest.update(fingerprint_tensors=["2.weight"], base_fingerprint=fingerprint(model, ["2.weight"]))
    both = compose([a, b])
    assert "base_fingerprint" not in both.manifest and both.base_values  # base values still check
    apply_diff_(model, both.only(["0.weight", "2.weight"]))
    c = make_diff(base_model(seed=5), {"0.weight": [3]}, 3)
    with pytest.raises(BaseMismatch):
        compose([a, c])


def test_dense_only_diff_applies_after_a_body():
    model = base_model()
    diff = make_diff(model, {"0.weight": [0, 1]}, dense=True)
    apply_diff_(model, diff.without_dense())
    apply_diff_(model, diff.dense_only())  # heads do not depend on the base weights
    assert torch.equal(model.state_dict()["2.bias"], diff.dense["2.bias"])

"""A diff is checked before it touches a model: NaN, out-of-range or duplicate indices, counts
that disagree with the manifest, a changed file (checksum), truncated / corrupt files are one
clear error naming the file; revert refuses a model the diff was not applied to."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparseft.export.sparse_diff import (BaseMismatch, SparseDiff, apply_diff_, fingerprint, load_diff,
                                         revert_diff_, save_diff)

NAMES = ("0.weight", "2.weight")


def base_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def make_diff(model) -> SparseDiff:
    params = dict(model.named_parameters())
    idx = {"0.weight": torch.tensor([1, 7, 40]), "2.weight": torch.tensor([2])}
    vals = {"0.weight": torch.tensor([0.5, -0.25, 1.0]), "2.weight": torch.tensor([0.125])}
    base = {n: params[n].detach().reshape(-1)[i].clone() for n, i in idx.items()}
    manifest = {"base_model": "toy", "base_fingerprint": fingerprint(model, NAMES), "fingerprint_tensors": list(NAMES)}
    return SparseDiff(idx, vals, {n: tuple(params[n].shape) for n in idx}, base, {}, manifest)


@pytest.fixture
def saved(tmp_path):
    return save_diff(make_diff(base_model()), tmp_path / "d")


def rewrite(folder, change_tensors=None, change_manifest=None, drop_checksum=True):
    """Edit a saved diff in place (tensors and/or manifest), as a buggy tool or a bad disk would."""
    tensors = load_file(str(folder / "diff.safetensors"))
    if change_tensors:
        change_tensors(tensors)
    save_file(tensors, str(folder / "diff.safetensors"))
    manifest = json.loads((folder / "manifest.json").read_text())
    if drop_checksum:
        manifest.pop("checksum")
    if change_manifest:
        change_manifest(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_saved_diff_has_a_checksum_and_loads(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["checksum"].startswith("sha256:")
    assert load_diff(saved).count == 4


def test_changed_values_fail_the_checksum(saved):
    rewrite(saved, lambda t: t["0.weight::values"].mul_(2), drop_checksum=False)
    with pytest.raises(ValueError, match=r"d/diff.safetensors: checksum mismatch"):
        load_diff(saved)


def test_old_diff_without_checksum_loads_with_a_warning(saved):
    rewrite(saved)
    with pytest.warns(UserWarning, match="no checksum"):
        diff = load_diff(saved)
    model = base_model()
    apply_diff_(model, diff)  # still usable


@pytest.mark.parametrize("edit, message", [
    (lambda t: t["0.weight::values"].__setitem__(1, float("nan")), "1 of 3 values are NaN or infinite"),
    (lambda t: t["0.weight::base"].__setitem__(0, float("inf")), "1 of 3 base values are NaN or infinite"),
    (lambda t: t.__setitem__("0.weight::indices", torch.tensor([1, 7, 48], dtype=torch.int32)),
     r"index 48 is out of range for shape \(8, 6\)"),
    (lambda t: t.__setitem__("0.weight::indices", torch.tensor([1, -3, 40], dtype=torch.int32)),
     "index -3 is out of range"),
    (lambda t: t.__setitem__("0.weight::indices", torch.tensor([1, 7, 7], dtype=torch.int32)), "1 duplicate indices"),
    (lambda t: t.__setitem__("0.weight::values", torch.tensor([0.5, 1.0])), "3 indices but 2 values"),
    (lambda t: t.__setitem__("9.weight::values", torch.tensor([0.5])), "values without indices for \\['9.weight'\\]"),
])
def test_bad_tensors_are_refused_naming_the_file(saved, edit, message):
    rewrite(saved, edit)
    with warnings.catch_warnings(), pytest.raises(ValueError, match=message) as exc:
        warnings.simplefilter("ignore")  # old-style file: no checksum
        load_diff(saved)
    assert str(exc.value).startswith(f"{saved / 'diff.safetensors'}: ")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.__setitem__("count", 5), "the manifest's count is 5, the file stores 4 entries"),
    (lambda m: m["tensors"]["0.weight"].__setitem__("count", 2), "0.weight: the manifest says 2 entries"),
    (lambda m: m["tensors"].pop("2.weight"), "stored but not listed \\['2.weight'\\]"),
    (lambda m: m["tensors"].__setitem__("x.weight", {"shape": [2], "count": 1}), "listed but not stored"),
])
def test_manifest_that_disagrees_with_the_tensors_is_refused(saved, edit, message):
    rewrite(saved, change_manifest=edit)
    with warnings.catch_warnings(), pytest.raises(ValueError, match=message):
        warnings.simplefilter("ignore")
        load_diff(saved)


def test_in_memory_diff_with_nan_or_bad_index_is_refused():
    model = base_model()
    good = make_diff(model)
    with pytest.raises(ValueError, match="NaN"):
        SparseDiff(good.indices, {**good.values, "2.weight": torch.tensor([float("nan")])}, good.shapes)
    with pytest.raises(ValueError, match="out of range"):
        SparseDiff({**good.indices, "2.weight": torch.tensor([24])}, good.values, good.shapes)


def test_truncated_or_corrupt_files_are_one_error_naming_the_file(saved):
    st = saved / "diff.safetensors"
    st.write_bytes(st.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{st}: cannot read the tensors, the file is truncated or corrupt"):
        load_diff(saved)
    (saved / "manifest.json").write_text('{"format": "sparseft.sparse_di')
    with pytest.raises(ValueError, match=f"{saved / 'manifest.json'}: not valid JSON"):
        load_diff(saved)


def test_revert_refuses_a_model_the_diff_was_not_applied_to():
    a, other = base_model(0), base_model(1)
    diff = make_diff(a)
    with pytest.raises(BaseMismatch, match="does not hold base"):
        revert_diff_(other, diff)          # would write a's W0 into another model
    with pytest.raises(BaseMismatch):
        revert_diff_(a, diff)              # not applied: nothing to revert
    w0 = {k: v.clone() for k, v in a.state_dict().items()}
    apply_diff_(a, diff)
    revert_diff_(a, diff)
    assert all(torch.equal(v, w0[k]) for k, v in a.state_dict().items())
    revert_diff_(other, diff, force=True)  # the user insists
    assert torch.equal(other.state_dict()["0.weight"].reshape(-1)[diff.indices["0.weight"]],
                       diff.base_values["0.weight"])

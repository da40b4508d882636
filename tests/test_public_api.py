"""The top-level API: every public name resolves, `import sparseft` stays light, verbs have examples."""

from __future__ import annotations

import inspect
import subprocess
import sys

import sparseft

VERBS = ["load", "export", "select_masks", "sparse_finetune", "prune_", "quantize_", "apply_diff_", "revert_diff_",
         "save_diff", "load_diff", "compose", "merge", "factorize_"]


def test_every_public_name_resolves():
    import importlib.util

    needs_peft = {"SparseFTConfig", "SparseFTCallback"}
    for name in sparseft.__all__:
        if name in needs_peft and importlib.util.find_spec("peft") is None:
            continue  # optional extra
        assert getattr(sparseft, name) is not None, name
    assert set(sparseft.__all__) <= set(dir(sparseft))
    assert set(VERBS) <= set(sparseft.__all__)


def test_unknown_names_raise_attribute_error():
    try:
        sparseft.no_such_verb  # noqa: B018
    except AttributeError as exc:
        assert "no_such_verb" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_sparseft_imports_no_heavy_library():
    code = ("import sys, sparseft; from sparseft import load, export; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'numpy', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_load_and_export_are_verbs_and_still_packages():
    import sparseft.export.sparse_diff  # noqa: F401  a submodule import must not shadow the verb
    import sparseft.load.model
    from sparseft import export, load

    assert callable(load) and callable(export)
    assert load.model.load_model is sparseft.load.model.load_model


def test_load_export_round_trip_and_unknown_format(tiny_bert_dir, tmp_path):
    import pytest
    import torch

    torch.manual_seed(0)
    model = sparseft.load(str(tiny_bert_dir), task="ner", labels=["O", "B-PER", "I-PER"])
    out = sparseft.export(model, tmp_path / "m")
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "AutoModelForTokenClassification" in card
    again = sparseft.load(str(out))  # task read from the saved architecture, labels from its config
    assert again.config.id2label == model.config.id2label
    for (n, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), n
    with pytest.raises(ValueError, match="unknown export format 'zip'"):
        sparseft.export(model, tmp_path / "z", format="zip")

"""The "sparseft" transformers quantizer: quantized / sparse-wrapped `save_pretrained` folders
load right through `from_pretrained` after `import sparseft`, and plain transformers refuses them.
A compressed-tensors export loads in a process that never imports sparseft."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

import sparseft  # noqa: F401
from sparseft.compress.quantize import DynamicInt8Config, NF4Config, RTNConfig, quantize_
from sparseft.export.compressed import export_compressed
from sparseft.load.model import load_model
from sparseft.sft.layer import merge_sparse_, sparsify_
from sparseft.utils.swaps import record_swaps_

LABELS = ["O", "B-PER", "I-PER"]
IDS = torch.randint(7, 60, (2, 9), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def ner(tiny_bert_dir):
    torch.manual_seed(0)
    return load_model(str(tiny_bert_dir), "ner", labels=LABELS).eval()


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("cfg", [RTNConfig(bits=4, symmetric=False, granularity="group", group_size=16),
                                 NF4Config(block_size=16), DynamicInt8Config()], ids=lambda c: type(c).__name__)
def test_quantized_save_pretrained_reloads_exactly(ner, tmp_path, cfg):
    from transformers import AutoModelForTokenClassification

    quantize_(ner, cfg)
    ner.save_pretrained(tmp_path / "q")
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "sparseft" and qc["layout"] == "modules" and len(qc["modules"]) > 0
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "q")
    assert torch.equal(_logits(loaded), _logits(ner))
    loaded.save_pretrained(tmp_path / "again")  # a loaded quantized model saves the same layout again
    assert torch.equal(_logits(AutoModelForTokenClassification.from_pretrained(tmp_path / "again")), _logits(ner))


def test_sparse_wrappers_are_recorded_and_removed(ner, tmp_path):
    name = "bert.encoder.layer.0.attention.self.query.weight"
    sparsify_(ner, {name: torch.rand(32, 32, generator=torch.Generator().manual_seed(1)) < 0.1})
    assert ner.config.quantization_config["modules"]["bert.encoder.layer.0.attention.self.query"]["k"] > 0
    state = ner.state_dict()
    assert state["bert.encoder.layer.0.attention.self.query.weight"].numel() == 0  # the guard
    ner.load_state_dict(state, strict=True)  # the guard is dropped again on load
    merge_sparse_(ner)
    assert getattr(ner.config, "quantization_config", None) is None


def test_foreign_quantization_config_is_not_overwritten(ner):
    ner.config.quantization_config = {"quant_method": "gptq", "bits": 4}
    with pytest.raises(ValueError, match="'gptq' quantization_config"):
        quantize_(ner, RTNConfig(bits=8))


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_plain_transformers_loads_compressed_tensors_and_refuses_sparseft_folders(ner, tmp_path):
    """A process without sparseft: the compressed-tensors folder loads exactly with the real
    `compressed-tensors` package; sparseft folders stop with an error instead of random weights."""
    pytest.importorskip("compressed_tensors")
    ct_model = copy.deepcopy(ner)
    quantize_(ct_model, RTNConfig(bits=4, granularity="group", group_size=16))
    assert export_compressed(ct_model, tmp_path / "ct")["layout"] == "compressed-tensors"
    torch.save(_logits(ct_model), tmp_path / "ref.pt")
    torch.save(IDS, tmp_path / "ids.pt")
    sp = copy.deepcopy(ner)
    quantize_(sp, RTNConfig(bits=4, symmetric=False, granularity="group", group_size=16))
    sp.save_pretrained(tmp_path / "modules")
    export_compressed(sp, tmp_path / "encoded", sparse="always")
    code = f"""
import sys, torch
from transformers import AutoModelForTokenClassification as A
m = A.from_pretrained({str(tmp_path / 'ct')!r})
ids = torch.load({str(tmp_path / 'ids.pt')!r}, weights_only=True)
ref = torch.load({str(tmp_path / 'ref.pt')!r}, weights_only=True)
with torch.no_grad():
    print("CT_DIFF", float((m(input_ids=ids).logits - ref).abs().max()))
for name in ("modules", "encoded"):
    try:
        A.from_pretrained({str(tmp_path)!r} + "/" + name)
        print("LOADED", name)
    except RuntimeError as exc:
        print("REFUSED", name)
assert "sparseft" not in sys.modules
"""
    res = _run(code)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "CT_DIFF 0.0" in res.stdout
    assert "REFUSED modules" in res.stdout and "REFUSED encoded" in res.stdout


def test_import_sparseft_registers_lazily_without_torch():
    res = _run("import sys, sparseft\nassert 'torch' not in sys.modules\n"
               "import transformers.quantizers.auto as a\nprint('sparseft' in a.AUTO_QUANTIZER_MAPPING)")
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr[-2000:]
    res = _run("import transformers.quantizers.auto as a, sparseft\nprint('sparseft' in a.AUTO_QUANTIZATION_CONFIG_MAPPING)")
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr[-2000:]


def test_record_swaps_is_a_no_op_for_bare_modules():
    record_swaps_(torch.nn.Linear(2, 2))  # no config: nothing to record, no error


def test_head_checkpoint_loads_into_the_base_model(ner, tmp_path):
    from transformers import AutoModel

    quantize_(ner, RTNConfig(bits=4, granularity="group", group_size=16))
    ner.save_pretrained(tmp_path / "q")
    base = AutoModel.from_pretrained(tmp_path / "q")  # BertModel: the 'bert.' prefix is dropped
    with torch.no_grad():
        assert torch.equal(base(input_ids=IDS).last_hidden_state, ner.bert(input_ids=IDS).last_hidden_state)


def test_compressed_export_refuses_layers_it_cannot_store(ner, tmp_path):
    sparsify_(ner, {"bert.encoder.layer.0.attention.self.query.weight": torch.ones(32, 32, dtype=torch.bool)})
    with pytest.raises(ValueError, match="cannot store SparseDelta layers yet.*merge_sparse_"):
        export_compressed(ner, tmp_path / "c")


def test_truncated_quantized_weights_are_one_line_error_naming_the_file(ner, tmp_path):
    from transformers import AutoModelForTokenClassification

    quantize_(ner, DynamicInt8Config())
    ner.save_pretrained(tmp_path / "q")
    weights = tmp_path / "q" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])  # header cut short
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        AutoModelForTokenClassification.from_pretrained(tmp_path / "q")

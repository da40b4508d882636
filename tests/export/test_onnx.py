"""ONNX export of a tiny BERT, read back by onnxruntime.InferenceSession: fp32 logits match torch
tightly, onnxruntime's dynamic int8 within an agreement margin; the CLI verb; refusals."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from sparseft.export.onnx import INT8_NAME, ONNX_NAME, OnnxEncoder, export_onnx, int8_settings, sample_inputs  # noqa: E402
from sparseft.utils.hardware import CpuInfo  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_bert_dir):
    from sparseft.load.model import load_model

    torch.manual_seed(0)
    model = load_model(str(tiny_bert_dir), "ner", labels=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]).eval()
    path = tmp_path_factory.mktemp("onnx") / "out"
    stats = export_onnx(model, path, int8=True)
    return model, path, stats


def test_fp32_and_int8_match_torch_in_onnxruntime(exported):
    import onnxruntime as ort

    model, path, stats = exported
    assert stats["verify"]["fp32"]["max_abs_logit_diff"] < 1e-4
    inputs = sample_inputs(model.config.vocab_size, 4, 23, seed=7)          # not the traced shape
    with torch.no_grad():
        ref = model(**inputs).logits
    keep = inputs["attention_mask"].bool()
    for name, tol, agree in ((ONNX_NAME, 1e-4, 1.0), (INT8_NAME, 0.15 * float(ref.abs().max()), 0.9)):
        sess = ort.InferenceSession(str(path / name), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
        got = torch.from_numpy(sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0])
        assert (got - ref).abs()[keep].max() < tol, name
        assert (got.argmax(-1) == ref.argmax(-1))[keep].float().mean() >= agree, name
    meta = json.loads((path / "sparseft_onnx.json").read_text())
    assert meta["int8"]["file"] == INT8_NAME and meta["exporter"] == "torch.onnx dynamo"
    assert stats["int8_bytes"] < stats["onnx_bytes"]


def test_onnx_encoder_runs_through_evaluate(exported, tiny_tokenizer):
    from sparseft.eval.evaluate import predict_logits

    model, path, _ = exported
    enc = OnnxEncoder(path)
    assert enc.config.id2label[1] == "B-PER"
    feats = [{"input_ids": [2, 10, 11, 12, 3]}, {"input_ids": [2, 13, 3]}]
    ours = dict(predict_logits(enc, feats, pad_id=0))
    ref = dict(predict_logits(model, feats, pad_id=0))
    assert all(torch.allclose(ours[i], ref[i], atol=1e-4) for i in ref)


def test_int8_settings_by_hardware_class():
    assert int8_settings(CpuInfo.from_flags({"avx2", "fma"}))["reduce_range"]                  # AVX2 only
    assert not int8_settings(CpuInfo.from_flags({"avx2", "avx512f", "avx512_vnni"}))["reduce_range"]
    assert not int8_settings(CpuInfo.from_flags({"avx2", "amx_int8", "amx_bf16"}))["reduce_range"]
    assert not int8_settings(CpuInfo.from_flags({"asimd"}, arch="aarch64"))["reduce_range"]


def test_refuses_quantized_decoder_and_half(exported, tiny_llama_dir, tmp_path):
    import copy

    from sparseft.compress.quantize import DynamicInt8Config, HalfPrecisionConfig, quantize_
    from sparseft.load.model import load_model

    bert_ner, llama_lm = copy.deepcopy(exported[0]), load_model(str(tiny_llama_dir), "lm")

    with pytest.raises(ValueError, match="decoder"):
        export_onnx(llama_lm, tmp_path / "a")
    half = copy.deepcopy(bert_ner)
    quantize_(half, HalfPrecisionConfig())
    with pytest.raises(ValueError, match="fp32 weights"):
        export_onnx(half, tmp_path / "b")
    quantize_(bert_ner, DynamicInt8Config(backend="int_mm"))
    with pytest.raises(ValueError, match="unquantized model"):
        export_onnx(bert_ner, tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in "abc")


def test_never_replaces_a_folder_sparseft_did_not_write(exported, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="overwrite"):
        export_onnx(exported[0], foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"

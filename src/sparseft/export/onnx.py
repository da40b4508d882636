"""ONNX export of encoder models, optionally with onnxruntime's dynamic int8, read back by onnxruntime.

    stats = export_onnx(model, "out/minilm-onnx", tokenizer=tok, int8=True)
    session = OnnxEncoder("out/minilm-onnx", int8=True)       # runs like the model: .logits
    sparseft export runs/conll/model --format onnx --int8 --output out/minilm-onnx

Folder layout: `model.onnx` (fp32; inputs input_ids / attention_mask int64 [batch, seq], output
logits, batch and sequence dynamic), `model_int8.onnx` with `int8`, `config.json` (labels),
tokenizer files, and `sparseft_onnx.json` (inputs, opset, exporter, the int8 settings and the
verification numbers).

Choices:
  * torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`, onnxscript). The legacy
    TorchScript exporter traces shape-dependent code of transformers 5 as constants: its graph
    gave logits 0.2 off for a sequence length other than the traced one; dynamo's agrees to 1e-6.
  * int8 = `onnxruntime.quantization.quantize_dynamic`: int8 weights per output channel,
    activations quantized at run time (uint8), MatMulInteger kernels. `reduce_range` (7-bit
    weights) is used on x86 CPUs without VNNI, where onnxruntime's u8s8 kernels can overflow
    their 16-bit intermediate sums (onnxruntime's quantization docs); `int8_settings(hw)`.
  * Every export is checked by running the file in `onnxruntime.InferenceSession` on a padded
    batch of another shape than the traced one and comparing logits with torch.
Only plain fp32 encoders export: quantized sparseft layers have no ONNX form (quantize in ONNX
with `int8=True` instead), and decoders belong in GGUF.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sparseft.utils.hardware import CpuInfo, detect
from sparseft.utils.io import atomic_write_json, dir_size_bytes
from sparseft.utils.outdir import replace_dir

ONNX_NAME = "model.onnx"
INT8_NAME = "model_int8.onnx"
META_NAME = "sparseft_onnx.json"
INPUTS = ("input_ids", "attention_mask")


class _Logits(nn.Module):
    """The model as a function of (input_ids, attention_mask) -> logits (or last hidden state)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def check_exportable(model: nn.Module) -> None:
    """ValueError unless `model` is a plain fp32 transformers encoder."""
    from sparseft.compress.quantize.dynamic import DynamicInt8Linear
    from sparseft.compress.quantize.layers import QuantEmbedding, QuantLinear

    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ValueError("ONNX export needs a transformers model (with .config)")
    if getattr(cfg, "is_decoder", False) or type(model).__name__.endswith("ForCausalLM"):
        raise ValueError(f"ONNX export covers encoders; {type(model).__name__} is a decoder (export it as GGUF)")
    quantized = [n for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantEmbedding, DynamicInt8Linear))]
    if quantized:
        raise ValueError(f"ONNX export needs the unquantized model ({quantized[0]} is a sparseft quantized layer); "
                         f"use int8=True (--int8) for onnxruntime's int8")
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes != {torch.float32}:
        raise ValueError(f"ONNX export needs fp32 weights, the model has {sorted(map(str, dtypes))}")


def int8_settings(hw: CpuInfo) -> dict:
    """onnxruntime quantize_dynamic options for this CPU (the rule tests cover)."""
    reduce_range = not hw.is_arm and not hw.int8_dot
    return {"weight_type": "QInt8", "per_channel": True, "reduce_range": reduce_range,
            "reason": ("x86 without VNNI: 7-bit weights avoid u8s8 overflow" if reduce_range
                       else f"{hw.hardware_class}: int8 dot products, full 8-bit weights")}


def sample_inputs(vocab: int, batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids with the last row right-padded to half length (so masking is exercised)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    mask[-1, seq // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def compare_with_torch(model: nn.Module, path: Path, *, batch: int = 3, seq: int = 11) -> dict:
    """Run `path` in onnxruntime and `model` in torch on the same padded batch; logit differences."""
    inputs = sample_inputs(int(model.config.vocab_size), batch, seq, seed=1)
    ref = _Logits(model.eval())(**inputs).float()
    got = torch.from_numpy(_session(path).run(None, {k: v.numpy() for k, v in inputs.items()})[0])
    keep = inputs["attention_mask"].bool() if ref.ndim == 3 else torch.ones(batch, dtype=torch.bool)
    return {"max_abs_logit_diff": float((ref - got).abs()[keep].max()),
            "argmax_agreement": float((ref.argmax(-1) == got.argmax(-1))[keep].float().mean())}


def export_onnx(model: nn.Module, directory: str | Path, *, tokenizer=None, int8: bool = False,
                opset: int | None = None, hw: CpuInfo | None = None, verify: bool = True,
                overwrite: bool = False, owner: str | None = None) -> dict[str, Any]:
    """Write `model` (an fp32 encoder) as ONNX into `directory` (replaced atomically); returns stats.

    Args:
        int8: also write onnxruntime's dynamic int8 model (`model_int8.onnx`).
        opset: ONNX opset (default: the exporter's).
        hw: the CPU the int8 model is meant for (default: this one; see `int8_settings`).
        verify: reload both files in onnxruntime and compare logits with torch.
        overwrite / owner: a non-empty folder sparseft did not write is refused unless
            overwrite=True (see `sparseft.utils.outdir`).
    Returns:
        {"path", "onnx_bytes", "int8_bytes", "export_seconds", "verify": {"fp32": ..., "int8": ...}, ...}
    """
    check_exportable(model)
    model.eval()
    directory = Path(directory)
    example = sample_inputs(int(model.config.vocab_size), 2, 16)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dims = {name: {0: batch, 1: seq} for name in INPUTS}
    meta: dict[str, Any] = {"inputs": list(INPUTS), "outputs": ["logits"], "exporter": "torch.onnx dynamo",
                            "opset": opset, "torch": torch.__version__}
    t0 = time.perf_counter()
    with replace_dir(directory, owner=owner, overwrite=overwrite) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # axis-renaming and deprecation chatter of the exporter
            torch.onnx.export(_Logits(model), (), str(tmp / ONNX_NAME), kwargs=example, dynamo=True,
                              dynamic_shapes=dims, input_names=list(INPUTS), output_names=["logits"],
                              opset_version=opset, external_data=False)
        meta["export_seconds"] = time.perf_counter() - t0
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            settings = int8_settings(hw or detect())
            quantize_dynamic(str(tmp / ONNX_NAME), str(tmp / INT8_NAME), weight_type=QuantType.QInt8,
                             per_channel=settings["per_channel"], reduce_range=settings["reduce_range"])
            meta["int8"] = {"file": INT8_NAME, "method": "onnxruntime.quantization.quantize_dynamic", **settings}
        if verify:
            meta["verify"] = {"fp32": compare_with_torch(model, tmp / ONNX_NAME)}
            if int8:
                meta["verify"]["int8"] = compare_with_torch(model, tmp / INT8_NAME)
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / META_NAME, meta)
    return {"path": str(directory), "onnx_bytes": (directory / ONNX_NAME).stat().st_size,
            "int8_bytes": (directory / INT8_NAME).stat().st_size if int8 else None,
            "size_bytes": dir_size_bytes(directory), **meta}


class OnnxEncoder(nn.Module):
    """An exported folder run by onnxruntime, called like the transformers model (returns .logits),
    so `sparseft.eval.evaluate` and `time_forward` take it as they take a torch model.

    Args:
        directory: a folder written by `export_onnx`. int8: use model_int8.onnx.
        threads: onnxruntime intra-op threads (default: onnxruntime's).
    """

    def __init__(self, directory: str | Path, *, int8: bool = False, threads: int | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig

        directory = Path(directory)
        path = directory / (INT8_NAME if int8 else ONNX_NAME)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found (export with export_onnx(..., int8={int8}))")
        self.config = AutoConfig.from_pretrained(directory)
        self.session = _session(path, threads)
        self.path = path
        # evaluate/time_forward look up the device through the parameters; onnxruntime runs on CPU
        self._device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any):
        from transformers.modeling_outputs import TokenClassifierOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feed = {"input_ids": input_ids.cpu().long().numpy(), "attention_mask": attention_mask.cpu().long().numpy()}
        return TokenClassifierOutput(logits=torch.from_numpy(self.session.run(None, feed)[0]))

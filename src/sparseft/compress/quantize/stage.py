"""Recipe stage `quantize`: quantize the run's model in place with any registered quantizer.

    - name: quant                       # e.g. GPTQ int4 calibrated on 128 training examples
      method: quantize
      quantizer: gptq                   # rtn | nf4 | kmeans | gptq | dynamic_int8
      quantizer_args: {bits: 4, group_size: 128}
      calib_samples: 128
    - {name: dev, method: eval, cost: false}
    - {name: export, method: export}    # compressed checkpoint (export/compressed_stage.py)

Logs which layers were quantized, the compressed checkpoint size against fp32 and, with
`cost: true`, CPU latency (batch 1) / throughput (batch 32) before and after; writes the
quantizer config (`sparseft_quantize.json`) into the stage's output folder.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field

from sparseft.compress.calibration import check_calibration, stage_calibration_batches
from sparseft.compress.quantize.api import needs_batches, quantize_
from sparseft.compress.quantize.layers import quantized_summary
from sparseft.config.base import BaseConfig, save_config
from sparseft.registry import REGISTRY, register_method

PROBE_EXAMPLES = 16  # training examples on which backend 'auto' checks each int8 kernel's error


def build_quantizer_config(quantizer: str, args: dict) -> BaseConfig:
    """The registered quantization config named `quantizer`, built (and validated) from `args`."""
    method = REGISTRY.get("quantize", quantizer)
    if not isinstance(args, dict):
        raise ValueError(f"quantizer_args must be a mapping of {method.config_cls.__name__} fields, got {args!r}")
    try:
        return method.config_cls.from_dict(args)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"quantizer {quantizer!r}: {exc}") from None


@dataclass
class QuantizeStageConfig(BaseConfig):
    """Args:
        quantizer: registered quantization method (rtn, nf4, kmeans, gptq, dynamic_int8).
        quantizer_args: fields of that method's config (e.g. {bits: 4, granularity: group}).
        calib_samples: first N training examples used as calibration batches (gptq, kmeans+importance).
        calib_batch_size: examples per calibration batch.
        cost: measure CPU latency/throughput before and after.
        seq_len / repeats: timing protocol (sparseft.eval.cost).
        output_dir: where the quantizer config goes.
    """

    quantizer: str = "dynamic_int8"
    quantizer_args: dict = field(default_factory=dict)
    calib_samples: int = 128
    calib_batch_size: int = 8
    cost: bool = True
    seq_len: int = 64
    repeats: int = 10
    output_dir: str = "runs/quantize"

    def __post_init__(self) -> None:
        check_calibration(self.calib_samples, self.calib_batch_size)
        self.build()

    def build(self) -> BaseConfig:
        return build_quantizer_config(self.quantizer, self.quantizer_args)


def compressed_size(model) -> dict:
    """Size of the model's compressed checkpoint (written to a temporary folder)."""
    from sparseft.export.compressed import export_compressed

    with tempfile.TemporaryDirectory() as tmp:
        stats = export_compressed(model, tmp)
    return {"compressed_mb": stats["weights_bytes"] / 2**20, "fp32_mb": stats["fp32_bytes"] / 2**20,
            "compression_ratio": stats["compression_ratio"]}


def quantize_stage(ctx, cfg: QuantizeStageConfig, name: str) -> None:
    from sparseft.eval.cost import measure_cost

    qcfg = cfg.build()
    batches = None
    if needs_batches(qcfg):
        batches = stage_calibration_batches(ctx, cfg.calib_samples, cfg.calib_batch_size)
    if cfg.cost:
        before = measure_cost(ctx.model, seq_len=cfg.seq_len, repeats=cfg.repeats, disk=False)
        ctx.report.log(name, {"before": {k: before[k] for k in ("latency_ms_b1", "throughput_seq_s_b32")}})
    kernel = None
    if callable(getattr(qcfg, "resolve", None)):  # measured choices ("auto" int8 kernels), made once here
        # the kernels' error is probed on a few real training examples where the run has them
        probe = batches or stage_calibration_batches(ctx, min(cfg.calib_samples, PROBE_EXAMPLES), cfg.calib_batch_size)
        qcfg, kernel = qcfg.resolve(ctx.model, batches=probe or None)
    quantize_(ctx.model, qcfg, batches=batches)
    save_config(qcfg, cfg.output_dir, "sparseft_quantize.json")
    metrics = {"quantizer": cfg.quantizer, **quantized_summary(ctx.model), **compressed_size(ctx.model)}
    if kernel:
        metrics["kernel"] = {"choice": kernel["choice"], "reason": kernel["reason"],
                             "relative_time": {k: round(v["relative_time"], 3) for k, v in kernel["candidates"].items()},
                             "worst_layer_sqnr_db": {k: round(v["sqnr_db"], 1) for k, v in kernel["candidates"].items()}}
    if batches:
        metrics["calib_examples"] = sum(len(b["input_ids"]) for b in batches)
    if cfg.cost:
        after = measure_cost(ctx.model, seq_len=cfg.seq_len, repeats=cfg.repeats, disk=False)
        metrics["after"] = {k: after[k] for k in ("latency_ms_b1", "throughput_seq_s_b32")}
    ctx.state[name] = metrics
    ctx.report.log(name, metrics)


register_method(kind="stage", name="quantize", config_cls=QuantizeStageConfig, apply_fn=quantize_stage,
                description="quantize the model (rtn, nf4, kmeans, gptq, dynamic_int8)")

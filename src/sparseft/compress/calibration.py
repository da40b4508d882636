"""Calibration data for the prune and quantize stages: one validation rule, one batching rule.

Data-driven compressors (Wanda, SparseGPT, GPTQ, activation-weighted k-means, ...) read a fixed,
stated subset: the first `calib_samples` training examples, padded into batches of
`calib_batch_size`. Both stage configs declare those two fields and validate them here.
"""

from __future__ import annotations


def check_calibration(calib_samples: int, calib_batch_size: int) -> None:
    """Refuse negative sample counts and empty batches."""
    if calib_samples < 0 or calib_batch_size < 1:
        raise ValueError(f"calib_samples must be >= 0 and calib_batch_size >= 1, got "
                         f"{calib_samples} / {calib_batch_size}")


def calibration_batches(features: list[dict], pad_id: int, n: int, batch_size: int) -> list[dict]:
    """The first `n` features (a fixed, stated subset) as padded batches."""
    from sparseft.load.tokenize import PadCollator

    feats = list(features[:n])
    if not feats:
        raise ValueError("calibration needs training examples: give data.train and calib_samples > 0")
    collate = PadCollator(pad_id)
    return [collate(feats[i:i + batch_size]) for i in range(0, len(feats), batch_size)]


def stage_calibration_batches(ctx, n: int, batch_size: int) -> list[dict]:
    """`calibration_batches` over a run context's training examples (none when it has no data)."""
    return calibration_batches(ctx.data.train if ctx.data is not None else [], ctx.pad_id, n, batch_size)

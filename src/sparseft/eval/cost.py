"""Model cost: parameters, nonzeros, size on disk, CPU latency (batch 1) and throughput (batch 32).

Timing protocol: fixed random token ids of `seq_len` tokens, `warmup` untimed calls, then the
median of `repeats` timed calls, under torch.inference_mode. Numbers depend on the machine and
thread count; reports record both. Masks alone do not make a dense model faster on CPU: speed
comes from smaller (structurally pruned) or int8 models.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from sparseft.utils.io import dir_size_bytes


def count_parameters(model: torch.nn.Module) -> dict:
    """Total and nonzero parameter counts (tied tensors counted once)."""
    seen, total, nonzero = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return {"params": total, "nonzero_params": nonzero,
            "sparsity": 1.0 - nonzero / total if total else 0.0}


def size_on_disk(model: torch.nn.Module) -> int:
    """Bytes of `save_pretrained(model)` (safetensors) in a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return dir_size_bytes(tmp)


def _dummy_inputs(model, batch: int, seq_len: int, seed: int = 0) -> dict:
    vocab = getattr(model.config, "vocab_size", 1000)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, max(6, vocab - 1), (batch, seq_len), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.inference_mode()
def time_forward(model, *, batch: int, seq_len: int = 64, warmup: int = 3, repeats: int = 10) -> float:
    """Median seconds of one forward pass on `batch` x `seq_len` random tokens."""
    model.eval()
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in _dummy_inputs(model, batch, seq_len).items()}
    for _ in range(warmup):
        model(**inputs)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_cost(model, *, seq_len: int = 64, repeats: int = 10, throughput_batch: int = 32,
                 disk: bool = True) -> dict:
    """All cost numbers in one dict (latency in ms, throughput in sequences/s)."""
    out = count_parameters(model)
    if disk:
        out["size_mb"] = size_on_disk(model) / 2**20
    lat = time_forward(model, batch=1, seq_len=seq_len, repeats=repeats)
    thr = time_forward(model, batch=throughput_batch, seq_len=seq_len, repeats=max(3, repeats // 2))
    out.update({"latency_ms_b1": lat * 1000, "throughput_seq_s_b32": throughput_batch / thr,
                "seq_len": seq_len, "threads": torch.get_num_threads()})
    return out


def weights_mb(model: torch.nn.Module) -> float:
    """MB of the model's state_dict tensors as held (unique storages, tied weights once).

    Shrinks with quantization (packed integer buffers), structured pruning and factorization;
    unstructured zeros do not shrink dense storage (`count_parameters` counts the nonzeros).
    """
    seen, total = set(), 0
    for t in model.state_dict(keep_vars=True).values():
        if not isinstance(t, torch.Tensor):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel()) if t.numel() else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total / 2**20


def model_size(model: torch.nn.Module) -> dict:
    """Parameters, nonzero parameters and weights_mb: the size numbers a before/after compares."""
    counts = count_parameters(model)
    return {"params": counts["params"], "nonzero_params": counts["nonzero_params"], "weights_mb": weights_mb(model)}


def weights_size_bytes(path: str | Path) -> int:
    return dir_size_bytes(path)


def stage_cost(model, cfg) -> dict | None:
    """`measure_cost` with a stage config's `cost` / `seq_len` / `repeats` fields (None when cost is off)."""
    return measure_cost(model, seq_len=cfg.seq_len, repeats=cfg.repeats) if cfg.cost else None

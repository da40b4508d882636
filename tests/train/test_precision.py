"""mixed_precision 'auto': the CPU/GPU rule with injected hardware and probes, and bf16 training
matching fp32 on a tiny model."""

from __future__ import annotations

import pytest
import torch

from sparseft.train.precision import choose_precision, step_probe
from sparseft.utils.hardware import CpuInfo

AMX = CpuInfo.from_flags({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})
VNNI = CpuInfo.from_flags({"avx2", "avx512f", "avx512_vnni"})
AVX2 = CpuInfo.from_flags({"avx2", "fma"})
GRAVITON = CpuInfo.from_flags({"asimd", "sve", "bf16", "i8mm"}, arch="aarch64")


def probe_of(times: dict):
    calls = []

    def probe(precision):
        calls.append(precision)
        return times[precision]
    return probe, calls


@pytest.mark.parametrize("hw", [VNNI, AVX2])
def test_cpu_without_native_bf16_stays_fp32_without_probing(hw):
    probe, calls = probe_of({"no": 1.0, "bf16": 0.1})
    choice = choose_precision("auto", hw=hw, cuda=False, probe=probe, world_size=1)
    assert choice.precision == "no" and calls == [] and hw.hardware_class in choice.reason


@pytest.mark.parametrize("hw", [AMX, GRAVITON])
def test_native_bf16_uses_bf16_only_when_the_probe_is_faster(hw):
    fast, _ = probe_of({"no": 0.95, "bf16": 0.65})
    choice = choose_precision("auto", hw=hw, cuda=False, probe=fast, world_size=1)
    assert choice.precision == "bf16" and "1.46x" in choice.line() and choice.timings == {"fp32": 0.95, "bf16": 0.65}
    slow, _ = probe_of({"no": 1.0, "bf16": 0.97})   # within noise: not worth it
    assert choose_precision("auto", hw=hw, cuda=False, probe=slow, world_size=1).precision == "no"


def test_multiprocess_and_gpu_and_explicit():
    probe, calls = probe_of({"no": 1.0, "bf16": 2.0})
    assert choose_precision("auto", hw=AMX, cuda=False, probe=probe, world_size=2).precision == "bf16"
    assert calls == []  # ranks could disagree: rule only
    assert choose_precision("auto", hw=AVX2, cuda=True, cuda_bf16=True).precision == "bf16"
    assert choose_precision("auto", hw=AVX2, cuda=True, cuda_bf16=False).precision == "no"
    assert choose_precision("bf16", hw=AVX2, cuda=False).precision == "bf16"
    with pytest.raises(ValueError, match="fp16.*needs a GPU"):
        choose_precision("fp16", hw=AMX, cuda=False)


def test_step_probe_leaves_no_trace():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1)).eval()
    batch = {"x": torch.randn(4, 8)}
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.random.get_rng_state()
    probe = step_probe(model, batch, lambda m, b: m(b["x"]).sum(), repeats=1)
    assert probe("no") > 0 and probe("bf16") > 0
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state whose mixed precision cannot change; tests that train
    in two precisions reset it around themselves (accelerate's own tests do the same)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_training_matches_fp32_on_a_tiny_model(tmp_path, tiny_bert_dir, fresh_accelerate_state):
    from sparseft.load.model import load_model
    from sparseft.load.tokenize import PadCollator
    from sparseft.train.config import TrainConfig
    from sparseft.train.loop import train

    gen = torch.Generator().manual_seed(0)
    data = []
    for _ in range(48):  # learnable: the label of a token is its id parity
        ids = torch.randint(7, 60, (12,), generator=gen)
        data.append({"input_ids": ids.tolist(), "attention_mask": [1] * 12, "labels": (ids % 2).tolist()})
    losses = {}
    from accelerate.state import AcceleratorState

    for precision in ("no", "bf16"):
        AcceleratorState._reset_state(reset_partial_state=True)
        torch.manual_seed(0)
        model = load_model(str(tiny_bert_dir), "ner", labels=["A", "B"])
        cfg = TrainConfig(output_dir=str(tmp_path / precision), epochs=4, batch_size=8, lr=3e-3, warmup_ratio=0.0,
                          mixed_precision=precision, eval_every="never", progress=False, resume=False, log_every=1)
        result = train(model, data, cfg, collate_fn=PadCollator(0))
        losses[precision] = [r["loss"] for r in result.history if "loss" in r]
    first, last32, last16 = losses["no"][0], losses["no"][-1], losses["bf16"][-1]
    assert last32 < 0.8 * first                                     # it learned
    assert abs(losses["bf16"][0] - first) < 0.02 * first            # same start (bf16 rounding only)
    assert abs(last16 - last32) < 0.03 * first                      # same end, within bf16 noise


def test_two_runs_in_one_process_may_choose_different_precisions(tmp_path, fresh_accelerate_state):
    """'auto' probes each run: a later run choosing another precision must not hit Accelerate's
    "AcceleratorState has already been initialized" error."""
    from sparseft.train.config import TrainConfig
    from sparseft.train.loop import make_accelerator

    first = make_accelerator(TrainConfig(output_dir=str(tmp_path / "a"), mixed_precision="no"))
    assert first.mixed_precision == "no"
    second = make_accelerator(TrainConfig(output_dir=str(tmp_path / "b"), mixed_precision="bf16"))
    assert second.mixed_precision == "bf16"


def test_the_trained_model_runs_in_its_own_precision_again(tmp_path, tiny_bert_dir, fresh_accelerate_state):
    """Accelerate wraps `model.forward` in autocast under bf16; train() must hand the model back
    without that wrapper (evaluation and timing after training would otherwise run in bf16)."""
    from sparseft.load.model import load_model
    from sparseft.load.tokenize import PadCollator
    from sparseft.train.config import TrainConfig
    from sparseft.train.loop import train

    model = load_model(str(tiny_bert_dir), "ner", labels=["A", "B"])
    class_forward = type(model).forward
    data = [{"input_ids": [5, 6, 7, 8], "attention_mask": [1] * 4, "labels": [0, 1, 0, 1]}] * 8
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), epochs=1, batch_size=4, mixed_precision="bf16",
                      eval_every="never", progress=False, resume=False)
    train(model, data, cfg, collate_fn=PadCollator(0))
    seen = []
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda mod, inp, out: seen.append((torch.is_autocast_enabled("cpu"), out.dtype)))
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7]]), attention_mask=torch.ones(1, 3, dtype=torch.long))
    assert seen == [(False, torch.float32)]
    assert "_original_forward" not in model.__dict__ and "forward" not in model.__dict__
    assert type(model).forward is class_forward

"""GPTQ: error compensation beats round-to-nearest on the same grid, layer by layer over the
blocks of a tiny Llama; pruned zeros stay zero; the codes are on the RTN grid."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from sparseft.compress.quantize import GPTQConfig, QuantLinear, RTNConfig, quantize_
from sparseft.compress.quantize.gptq import gptq_quantize
from sparseft.compress.quantize.pack import dequantize_codes, expand_groups, quantize_uniform


def correlated_inputs(n=2048, dim=64, seed=0) -> torch.Tensor:
    """Inputs with strongly correlated features (where error compensation pays off)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=gen) * torch.linspace(0.05, 2.0, dim)
    return torch.randn(n, dim, generator=gen) @ mix


def decode(codes, scale, zero, gs, cols):
    return dequantize_codes(codes, expand_groups(scale, gs, cols), expand_groups(zero, gs, cols))


@pytest.mark.parametrize("granularity,symmetric", [("channel", True), ("group", False), ("tensor", True)])
def test_gptq_has_lower_output_error_than_rtn_on_the_same_grid(granularity, symmetric):
    x = correlated_inputs()
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    y = x @ w.T
    kwargs = dict(bits=4, symmetric=symmetric, granularity=granularity, group_size=16)
    codes, scale, zero, gs = gptq_quantize(w, x.double().T @ x.double(), block_size=16, **kwargs)
    assert int(codes.max()) <= 15
    q_gptq = decode(codes, scale, zero, gs, 64)
    q_rtn = decode(*quantize_uniform(w, 4, symmetric, granularity, 16), 64)
    err_gptq = (x @ q_gptq.T - y).pow(2).mean()
    err_rtn = (x @ q_rtn.T - y).pow(2).mean()
    assert err_gptq < 0.8 * err_rtn


def test_gptq_keeps_pruned_zeros_and_compensates_them():
    x = correlated_inputs(seed=2)
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    w[torch.rand(16, 64, generator=torch.Generator().manual_seed(4)) < 0.5] = 0.0
    codes, scale, zero, gs = gptq_quantize(w, x.double().T @ x.double(), bits=8, symmetric=False,
                                           granularity="channel", group_size=64)
    q = decode(codes, scale, zero, gs, 64)
    assert torch.all(q[w == 0] == 0)


def calib_batches(vocab: int, n=4, seq=24, seed=0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(7, vocab, (2, seq), generator=gen),
             "attention_mask": torch.ones(2, seq, dtype=torch.long)} for _ in range(n)]


def test_gptq_on_tiny_llama_beats_rtn_and_swaps_every_block_linear(tiny_llama_dir):
    from sparseft.load.model import load_model

    base = load_model(str(tiny_llama_dir), "lm").eval()
    vocab = base.config.vocab_size
    batches = calib_batches(vocab)
    ids = torch.cat([b["input_ids"] for b in batches])
    with torch.no_grad():
        ref = base(input_ids=ids).logits
    errs = {}
    for name, cfg in (("gptq", GPTQConfig(bits=3, granularity="channel")), ("rtn", RTNConfig(bits=3))):
        model = copy.deepcopy(base)
        quantize_(model, cfg, batches=batches)
        layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
        assert len(layers) == 14 and all(m.method == name for m in layers)  # 2 blocks x 7 projections
        assert type(model.lm_head) is nn.Linear
        with torch.no_grad():
            errs[name] = float((model(input_ids=ids).logits - ref).pow(2).mean())
    assert errs["gptq"] < errs["rtn"]


def test_gptq_rejects_layers_outside_the_blocks(tiny_llama_dir):
    from sparseft.load.model import load_model

    model = load_model(str(tiny_llama_dir), "lm")
    with pytest.raises(ValueError, match="lm_head"):
        quantize_(model, GPTQConfig(ignore=[]), batches=calib_batches(model.config.vocab_size, n=1))


@torch.no_grad()
def test_sequential_gptq_calibrates_o_proj_on_the_quantized_qkv(llama_lm, lm_batches):
    """sequential=True: q/k/v see the dense inputs either way; o_proj's Hessian comes from a model
    whose block-0 q/k/v already compute with their quantized weights."""
    dense = llama_lm.eval()
    cfg = GPTQConfig(bits=3, granularity="channel", sequential=True)
    assert GPTQConfig.from_dict(cfg.to_dict()) == cfg
    seq, plain = copy.deepcopy(dense), copy.deepcopy(dense)
    quantize_(seq, cfg, batches=lm_batches)
    quantize_(plain, GPTQConfig(bits=3, granularity="channel"), batches=lm_batches)
    a_seq, a_plain = seq.model.layers[0].self_attn, plain.model.layers[0].self_attn
    for name in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(getattr(a_seq, name).dequantize(), getattr(a_plain, name).dequantize())
    probe = copy.deepcopy(dense)
    for name in ("q_proj", "k_proj", "v_proj"):
        getattr(probe.model.layers[0].self_attn, name).weight.copy_(getattr(a_seq, name).dequantize())
    H, mask = [0.0], [None]

    def hook(module, inp, out):
        x = inp[0][mask[0]].double()
        H[0] = H[0] + x.T @ x

    handle = probe.model.layers[0].self_attn.o_proj.register_forward_hook(hook)
    for b in lm_batches:
        mask[0] = b["attention_mask"].bool()
        probe(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    handle.remove()
    w = dense.model.layers[0].self_attn.o_proj.weight
    codes, scale, zero, gs = gptq_quantize(w, H[0], bits=3, symmetric=True, granularity="channel", group_size=128)
    expected = decode(codes, scale, zero, gs, w.shape[1])
    got = a_seq.o_proj.dequantize()
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())
    assert not torch.allclose(got, a_plain.o_proj.dequantize(), atol=1e-5)

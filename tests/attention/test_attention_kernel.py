"""The blocked kernel equals dense attention under the same boolean pattern, for every pattern part,
forward and backward (fp32, max abs error <= 1e-5); causal rows never look ahead; GQA, padding,
decoding offsets; and the kernel never allocates an L x L tensor."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sparseft.attention.config import SparseAttentionConfig
from sparseft.attention.interface import dense_reference
from sparseft.attention.kernel import blocked_attention
from sparseft.attention.pattern import pattern_mask, random_key_blocks

PATTERNS = {
    "window": dict(window=5),
    "sqrt": dict(window="sqrt", min_window=2, window_scale=0.8),
    "dilated": dict(window=4, dilation=3),
    "strided": dict(window=3, stride=7),
    "strided_sqrt": dict(window=3, stride="sqrt"),
    "fixed": dict(window=3, stride=6, stride_mode="fixed", fixed_width=2),
    "global": dict(window=4, global_tokens=2, global_positions=[30]),
    "sinks": dict(window=4, sinks=3),
    "random": dict(window=3, random_blocks=2, random_block_size=8, seed=3),
    "mixed": dict(window=3, sinks=2, stride=5, random_blocks=2, random_block_size=4, global_positions=[11],
                  block_size=7, dilation=2),
}
TOL = 1e-5


def _inputs(heads=4, kv_heads=2, q_len=37, kv_len=37, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, q_len, dim, generator=gen, requires_grad=True)
    k = torch.randn(2, kv_heads, kv_len, dim, generator=gen, requires_grad=True)
    v = torch.randn(2, kv_heads, kv_len, dim, generator=gen, requires_grad=True)
    return q, k, v


def _padding(kv_len):
    keep = torch.ones(2, kv_len, dtype=torch.bool)
    keep[0, :3] = False      # left padding
    keep[1, -6:] = False     # right padding
    return keep


def _compare(cfg, causal, *, q_len=37, kv_len=37, kv_heads=2, pad=False):
    q, k, v = _inputs(kv_heads=kv_heads, q_len=q_len, kv_len=kv_len)
    keep = _padding(kv_len) if pad else None
    out = blocked_attention(q, k, v, cfg, causal=causal, scaling=8 ** -0.5, key_padding=keep)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    allowed = pattern_mask(cfg, q_len, kv_len, causal, key_padding=keep)
    ref = dense_reference(q, k, v, allowed, scaling=8 ** -0.5, key_padding=keep)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    assert out.shape == ref.shape == (2, q_len, 4, 8)
    assert (out - ref).abs().max() <= TOL
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= TOL
    return allowed


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
def test_pattern_matches_dense_masked_reference(name, causal):
    allowed = _compare(SparseAttentionConfig(**PATTERNS[name]), causal)
    assert not allowed.all()          # the pattern is really sparse at this length
    if causal:
        assert not allowed.triu(1).any()   # never looks ahead


@pytest.mark.parametrize("name", ["window", "sqrt", "random", "mixed"])
@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
def test_padding_and_gqa_and_mha(name, causal):
    _compare(SparseAttentionConfig(**PATTERNS[name]), causal, pad=True, kv_heads=2)
    _compare(SparseAttentionConfig(**PATTERNS[name]), causal, pad=True, kv_heads=4)


@pytest.mark.parametrize("q_len", [1, 5])
@pytest.mark.parametrize("name", ["window", "sinks", "mixed"])
def test_decoding_queries_at_the_end_of_the_keys(name, q_len):
    _compare(SparseAttentionConfig(**PATTERNS[name]), True, q_len=q_len, kv_len=37)


def test_causal_output_does_not_depend_on_future_keys():
    cfg = SparseAttentionConfig(**PATTERNS["mixed"])
    q, k, v = _inputs()
    out = blocked_attention(q, k, v, cfg, causal=True, scaling=0.3)
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, 20:] += 5.0
    v2[:, :, 20:] -= 5.0
    out2 = blocked_attention(q, k2, v2, cfg, causal=True, scaling=0.3)
    assert torch.equal(out[:, :20], out2[:, :20])
    assert not torch.allclose(out[:, 20:], out2[:, 20:])


def test_window_covering_everything_is_full_attention():
    q, k, v = _inputs(kv_heads=4)
    for causal in (False, True):
        out = blocked_attention(q, k, v, SparseAttentionConfig(window=37), causal=causal, scaling=0.35)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=0.35)
        assert (out - ref.transpose(1, 2)).abs().max() <= TOL


def test_adaptive_window_follows_the_length():
    cfg = SparseAttentionConfig(window="sqrt", window_scale=2.0, min_window=8)
    assert cfg.window_for(16) == 8 and cfg.window_for(1024) == 64 and cfg.window_for(4096) == 128
    assert SparseAttentionConfig(window=100).window_for(4096) == 100


def test_random_blocks_are_seeded_and_causal():
    cfg = SparseAttentionConfig(random_blocks=3, seed=1)
    a = random_key_blocks(cfg, torch.arange(40), 40, causal=True)
    assert torch.equal(a, random_key_blocks(cfg, torch.arange(40), 40, causal=True))
    assert not torch.equal(a, random_key_blocks(cfg.replace(seed=2), torch.arange(40), 40, causal=True))
    drawn = a >= 0
    assert (a[drawn] < torch.arange(40).unsqueeze(1).expand_as(a)[drawn]).all()    # earlier blocks only
    assert (a[0] == -1).all()


class _MaxNumel(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.biggest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.biggest = max(self.biggest, t.numel())
        return out


@pytest.mark.parametrize("causal", [False, True])
def test_kernel_never_allocates_an_L_by_L_tensor(causal):
    length = 512
    cfg = SparseAttentionConfig(window="sqrt", sinks=4, global_tokens=1, stride=128, random_blocks=1)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, length, 16, generator=gen, requires_grad=True)
    k = torch.randn(1, 1, length, 16, generator=gen, requires_grad=True)
    v = torch.randn(1, 1, length, 16, generator=gen, requires_grad=True)
    mode = _MaxNumel()
    with mode:
        out = blocked_attention(q, k, v, cfg, causal=causal, scaling=0.25, key_padding=torch.ones(1, length).bool())
        out.sum().backward()
    assert q.grad is not None and mode.biggest < length * length / 2, mode.biggest


def test_config_validates_and_round_trips():
    cfg = SparseAttentionConfig(window="sqrt", sinks=4, stride=8, stride_mode="fixed", global_positions=[0, 5])
    back = SparseAttentionConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg
    assert SparseAttentionConfig(window="12").window == 12
    for bad, field in [({"window": "log"}, "window"), ({"window": 0}, "window"), ({"backend": "cuda"}, "backend"),
                       ({"stride_mode": "x"}, "stride_mode"), ({"dilation": 0}, "dilation"), ({"sinks": -1}, "sinks")]:
        with pytest.raises(ValueError, match=field):
            SparseAttentionConfig(**bad)


def _saved_bytes(fn):
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


@pytest.mark.parametrize("causal", [False, True])
def test_recompute_gives_the_same_result_and_keeps_only_the_inputs(causal):
    from sparseft.attention.kernel import recomputed_blocked_attention

    cfg = SparseAttentionConfig(window=8, sinks=2, random_blocks=1, global_positions=[70])
    q, k, v = _inputs(q_len=300, kv_len=300)
    keep = _padding(300)
    plain, plain_bytes = _saved_bytes(lambda: blocked_attention(q, k, v, cfg, causal=causal, scaling=0.3,
                                                                key_padding=keep))
    again, again_bytes = _saved_bytes(lambda: recomputed_blocked_attention(
        q, k, v, cfg.replace(recompute=True), causal=causal, scaling=0.3, key_padding=keep, chunk_rows=64))
    grad = torch.randn_like(plain)
    for a, b in zip(torch.autograd.grad(plain, (q, k, v), grad), torch.autograd.grad(again, (q, k, v), grad)):
        assert (a - b).abs().max() <= TOL
    assert (plain - again).abs().max() <= TOL
    assert again_bytes < plain_bytes / 3


@pytest.mark.parametrize("causal", [False, True])
def test_adaptive_window_follows_each_sequence_not_the_batch_padding(causal):
    cfg = SparseAttentionConfig(window="sqrt", min_window=2, sinks=1)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 30, 8, generator=gen) for _ in range(3))
    alone = blocked_attention(q, k, v, cfg, causal=causal, scaling=0.35)            # window ceil(sqrt(30)) = 6
    pad = 70
    qp, kp, vp = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (q, k, v))    # right-padded to 100 keys
    other = torch.randn(1, 2, 100, 8, generator=gen)
    keep = torch.ones(2, 100, dtype=torch.bool)
    keep[0, 30:] = False
    batch = blocked_attention(torch.cat([qp, other]), torch.cat([kp, other]), torch.cat([vp, other]), cfg,
                              causal=causal, scaling=0.35, key_padding=keep)
    assert (batch[0, :30] - alone[0]).abs().max() <= TOL
    allowed = pattern_mask(cfg, 100, 100, causal, key_padding=keep)
    assert allowed.shape == (2, 100, 100) and not torch.equal(allowed[0], allowed[1])   # windows 6 and 10
    ref = dense_reference(torch.cat([qp, other]), torch.cat([kp, other]), torch.cat([vp, other]), allowed,
                          scaling=0.35, key_padding=keep)
    assert (batch[0, :30] - ref[0, :30]).abs().max() <= TOL
    assert (batch[1] - ref[1]).abs().max() <= TOL

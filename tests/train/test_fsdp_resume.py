"""Resume under distributed=fsdp on 2 CPU processes (torchrun, gloo): a run stopped after its
step-2 checkpoint and resumed reaches the uninterrupted run's weights and losses bit for bit, for
full fine-tuning (`train`) and sparse fine-tuning (`sparse_finetune`, masks reused from the
run's sft_masks file). The checkpoint has the 1-process layout: full tensors (no shards) in
trainable.safetensors and optimizer.pt, written by rank 0 after every rank gathered. One
torchrun start, ~15-25 s on 2 cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = r'''
import json, sys
from pathlib import Path
import torch, torch.distributed as dist
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM
import sparseft.methods  # noqa: F401
from sparseft.masks.magnitude import MagnitudeMaskConfig
from sparseft.sft.api import sparse_finetune
from sparseft.train.config import TrainConfig
from sparseft.train.loop import train

dist.init_process_group("gloo")
rank = dist.get_rank()
root = Path(sys.argv[1])

def fresh():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64))

g = torch.Generator().manual_seed(1)
data = [{"input_ids": torch.randint(0, 64, (12,), generator=g).tolist()} for _ in range(16)]

def collate(rows):
    ids = torch.tensor([r["input_ids"] for r in rows])
    return {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}

class Stop(Exception):
    pass

def stopping_at(step):  # the loss function raises on the first batch of `step` (after step-2's checkpoint)
    calls = {"n": 0}
    def loss_fn(model, batch):
        calls["n"] += 1
        if calls["n"] == step:
            raise Stop()
        return model(**batch).loss
    return loss_fn

def cfg(out, **kw):
    return TrainConfig(output_dir=str(out), max_steps=4, batch_size=2, lr=3e-2, save_every=2, log_every=1,
                       eval_every="never", distributed="fsdp", mixed_precision="no", progress=False,
                       group_by_length=False, seed=3, **kw)

def run(kind, out, loss_fn=None, model=None):
    model = model or fresh()
    if kind == "full":
        result = train(model, data, cfg(out), collate_fn=collate, **({"loss_fn": loss_fn} if loss_fn else {}))
        return result, {n: p.detach().clone() for n, p in model.named_parameters()}
    result, diff = sparse_finetune(model, data, cfg(out), MagnitudeMaskConfig(density=0.1), collate_fn=collate,
                                   **({"loss_fn": loss_fn} if loss_fn else {}))
    return result, {**{f"{n}::values": v for n, v in diff.values.items()},
                    **{f"{n}::indices": i for n, i in diff.indices.items()}, **diff.dense}

report = {}
for kind in ("full", "sparse"):
    whole, w_whole = run(kind, root / kind / "whole")
    stopped = fresh()
    try:
        run(kind, root / kind / "cut", stopping_at(3), model=stopped)
        raise SystemExit("the stopping run did not stop")
    except Stop:
        pass
    # the FSDP replica aliases the caller's storage until fully_shard copies its rows: the caller's
    # weights must still be the initial ones after 2 sharded steps
    untouched = all(torch.equal(p, q) for p, q in zip(stopped.state_dict().values(), fresh().state_dict().values()))
    ckpt = root / kind / "cut" / "checkpoints" / "last"
    saved = load_file(str(ckpt / "trainable.safetensors"))
    if kind == "full":  # every weight at its full shape
        shapes_ok = {n: tuple(t.shape) for n, t in saved.items()} == {n: tuple(p.shape) for n, p in fresh().named_parameters()}
        trained = sum(t.numel() for t in saved.values())
    else:  # value vectors as long as their (replicated) indices; the swaps' empty guards stay empty
        values = {n[: -len("values")]: t for n, t in saved.items() if n.endswith(".values")}
        shapes_ok = bool(values) and all(saved[n + "indices"].shape == t.shape for n, t in values.items())
        trained = sum(t.numel() for t in values.values())
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)
    moments = [s["exp_avg"] for s in opt["state"].values()] + [s["exp_avg_sq"] for s in opt["state"].values()]
    full_moments = all(type(v) is torch.Tensor for v in moments) and sum(v.numel() for v in moments) == 2 * trained
    resumed, w_resumed = run(kind, root / kind / "cut")
    report[kind] = {"resumed_from": resumed.resumed_from_step, "steps": resumed.steps,
                    "same_weights": sorted(w_whole) == sorted(w_resumed)
                                    and all(torch.equal(w_whole[n], w_resumed[n]) for n in w_whole),
                    "moved": any(not torch.equal(w_whole[n], p) for n, p in fresh().named_parameters() if n in w_whole)
                             if kind == "full" else bool(any(v.abs().sum() > 0 for k, v in w_whole.items() if k.endswith("::values"))),
                    "losses": [[r["loss"] for r in whole.history], [r["loss"] for r in resumed.history]],
                    "checkpoint_full": shapes_ok and full_moments, "caller_untouched": untouched}
if rank == 0:
    (root / "report.json").write_text(json.dumps(report))
dist.barrier()
dist.destroy_process_group()
'''


def test_fsdp_resume_is_bit_exact(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(tmp_path)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2],
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    for kind in ("full", "sparse"):
        r = report[kind]
        assert r["resumed_from"] == 2 and r["steps"] == 4, r
        assert r["moved"], "training must change the weights for the comparison to mean anything"
        assert r["same_weights"], kind
        whole, resumed = r["losses"]
        assert len(whole) == 4 and resumed == whole[2:], (whole, resumed)  # the resumed run logs steps 3-4
        assert r["checkpoint_full"], "the checkpoint must hold full tensors, not shards"
        assert r["caller_untouched"], "sharded training wrote into the caller's weights"

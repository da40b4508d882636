"""Global top-k over scores sharded by rows across 2 CPU processes (torchrun, gloo) equals the
1-process `topk_masks` exactly: ties (integer scores), negative and -0.0 scores, a tensor whose
slice on one rank is empty (FSDP-style uneven chunks), k from 1 to all entries, NaN refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WORKER = r'''
import json, sys
import torch, torch.distributed as dist
from sparseft.masks.mask import topk_masks
from sparseft.train.sharded_topk import sharded_topk_indices

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(0)
scores = {"a": torch.randint(0, 4, (7, 3), generator=g).float(),   # many ties
          "b": torch.rand(5, 4, generator=g),
          "c": torch.randn(1, 6, generator=g),                        # 1 row: rank 1's slice is empty
          "d": torch.tensor([[-0.0, 0.0, -1.5], [2.0, -0.0, 0.5]])}
total = sum(s.numel() for s in scores.values())

def shard(s):  # FSDP Shard(0): ceil-sized row chunks, the last rank's may be short or empty
    per = -(-s.shape[0] // world)
    r0, r1 = min(s.shape[0], rank * per), min(s.shape[0], (rank + 1) * per)
    return r0 * s.shape[1], s[r0:r1].reshape(-1)

checked = 0
for k in (1, 2, 5, 13, 20, total - 1, total):
    got = sharded_topk_indices({n: shard(s) for n, s in scores.items()}, k)
    want = topk_masks(scores, k)
    for n in scores:
        assert torch.equal(got[n], torch.nonzero(want[n].reshape(-1)).reshape(-1)), (k, n, got[n], want[n])
    checked += 1
errors = []
for bad_k in (0, total + 1):
    try:
        sharded_topk_indices({n: shard(s) for n, s in scores.items()}, bad_k)
    except ValueError as exc:
        errors.append(str(exc))
nan = dict(scores, b=torch.full((5, 4), float("nan")))
try:
    sharded_topk_indices({n: shard(s) for n, s in nan.items()}, 3)
except ValueError as exc:
    errors.append(str(exc))
if rank == 0:
    open(sys.argv[1], "w").write(json.dumps({"checked": checked, "errors": errors}))
dist.barrier()
dist.destroy_process_group()  # without it gloo can abort at exit ("terminate called without an active exception")
'''


def test_sharded_topk_equals_single_process(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(out)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["checked"] == 7
    assert len(result["errors"]) == 3 and "NaN" in result["errors"][2]

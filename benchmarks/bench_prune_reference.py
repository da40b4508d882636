"""Why SmolLM2 loses more under SparseGPT / Wanda than OPT-125M in the papers: code, calibration or shape?

    python benchmarks/bench_prune_reference.py                    # SmolLM2-135M, blocks 0 / 15 / 29
    python benchmarks/bench_prune_reference.py --model M --data F --blocks 0 --calib 2 4 --heldout 2 \\
        --block-size 64 --reference-layers 1                      # smoke test on a tiny model

One layer-wise question per chosen block: the inputs of its Linear layers are collected from the
*dense* model on WikiText-2 windows (the pruning benchmark's windows: calibration = the first
windows of the file's first 90%, held out = the first `--heldout` windows of the last 10%), and each
layer is pruned alone from them (the standard layer-wise reconstruction problem; the pipeline
additionally feeds each block the pruned blocks' outputs).

  code         our `sparsegpt_weight` against a straightforward reference written from the OBS
               update (float64, one column at a time, the explicit inverse-Hessian downdate, no
               lazy batches and no Cholesky trick), at 50% and 2:4: the largest weight difference,
               the share of equal masks and both layers' errors. Our Wanda against |W| x ||X||
               written out the same way.
  calibration  the held-out relative output error ||(W - W')X||^2 / ||WX||^2 of SparseGPT and Wanda
               from `--calib` calibration windows (default 8 / 32 / 128 / 256).
  shape        that error per layer type with the layer's shape and its input outliers (largest
               / median input-feature norm). OPT-125M cannot be loaded here (no hub), so the
               comparison with it is by the published perplexity ratios only.

One JSON record goes to benchmarks/results/prune_reference-<UTC stamp>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WIKI = "../shared/data/wikitext2/wiki.valid.tokens"
SETTINGS = (("50%", 0.5, None), ("2:4", 0.5, (2, 4)))


def damped(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(H with dead inputs set to 1 on the diagonal and dampening added, the dead-input mask)."""
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype)
    return H, dead


@torch.no_grad()
def reference_sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, *, sparsity: float,
                        nm: tuple[int, int] | None, block_size: int = 128, damp: float = 0.01) -> torch.Tensor:
    """SparseGPT written plainly from the OBS update, in float64.

    Column j is pruned with the inverse Hessian of the columns not yet processed, Hinv_j; the
    error of its pruned entries is spread over the remaining columns, W[:, j:] -= err Hinv_j[j, j:],
    with err = (w - q) / Hinv_j[j, j]; then Hinv is downdated to drop column j:
    Hinv -= Hinv[:, j] Hinv[j, :] / Hinv[j, j]. The mask follows the paper: per block of columns
    (unstructured: the block's share of the budget, largest remainders first) or per group of M
    (N:M), by the saliency w^2 / Hinv_j[j, j] of the current weights.
    """
    from sparseft.compress.prune.sparsegpt import _block_budgets

    W = weight.double().clone()
    H, dead = damped(hessian.double(), damp)
    W[:, dead] = 0.0
    rows, cols = W.shape
    Hinv = torch.linalg.inv(H)
    diag = torch.empty(cols, dtype=torch.float64)           # Hinv_j[j, j]: depends on H only
    probe = Hinv.clone()
    for j in range(cols):
        diag[j] = probe[j, j]
        probe -= torch.outer(probe[:, j], probe[j, :]) / probe[j, j]
    budgets = _block_budgets(rows, cols, block_size, sparsity) if nm is None else []
    prune = torch.zeros_like(W, dtype=torch.bool)
    for b, i1 in enumerate(range(0, cols, block_size)):
        i2 = min(i1 + block_size, cols)
        if nm is None and budgets[b] > 0:
            sal = (W[:, i1:i2] ** 2 / diag[i1:i2]).reshape(-1)
            block = torch.zeros_like(sal, dtype=torch.bool)
            block[torch.topk(sal, budgets[b], largest=False).indices] = True
            prune[:, i1:i2] = block.reshape(rows, i2 - i1)
        for j in range(i1, i2):
            if nm is not None and (j - i1) % nm[1] == 0:
                sal = W[:, j:j + nm[1]] ** 2 / diag[j:j + nm[1]]
                idx = torch.topk(sal, nm[1] - nm[0], dim=1, largest=False).indices
                prune[:, j:j + nm[1]].scatter_(1, idx, True)
            q = torch.where(prune[:, j], torch.zeros_like(W[:, j]), W[:, j])
            err = (W[:, j] - q) / Hinv[j, j]
            W[:, j:] -= torch.outer(err, Hinv[j, j:])
            W[:, j] = q
            Hinv -= torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    return W


def reference_wanda(weight: torch.Tensor, xtx: torch.Tensor, *, sparsity: float,
                    nm: tuple[int, int] | None) -> torch.Tensor:
    """|W_ij| * ||X_j|| with the lowest per row (unstructured) or per group of M inputs pruned."""
    score = weight.double().abs() * torch.diag(xtx.double()).sqrt()
    rows, cols = score.shape
    keep = torch.ones_like(score, dtype=torch.bool)
    if nm is None:
        k = int(round(sparsity * cols))
        keep.scatter_(1, torch.topk(score, k, dim=1, largest=False).indices, False)
    else:
        n, m = nm
        groups = score.reshape(rows, cols // m, m)
        idx = torch.topk(groups, m - n, dim=2, largest=False).indices
        keep = keep.reshape(rows, cols // m, m).scatter_(2, idx, False).reshape(rows, cols)
    return weight.double() * keep


def relative_error(weight: torch.Tensor, pruned: torch.Tensor, xtx: torch.Tensor) -> float:
    """||(W - W')X||^2 / ||WX||^2 from X^T X (any token count)."""
    W, d, G = weight.double(), (weight.double() - pruned.double()), xtx.double()
    return float(torch.einsum("oi,ij,oj->", d, G, d) / torch.einsum("oi,ij,oj->", W, G, W))


def collect(model, blocks: list[int], windows: list[torch.Tensor], heldout: list[torch.Tensor],
            checkpoints: list[int]) -> dict:
    """Per targeted layer: X^T X after each calibration checkpoint and on the held-out windows."""
    from sparseft.compress.prune.layerwise import find_blocks

    _, layers = find_blocks(model)
    targets = {f"{i}.{sub}": mod for i in blocks for sub, mod in layers[i].named_modules()
               if isinstance(mod, torch.nn.Linear)}
    sums = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for name, m in targets.items()}
    norms_max = {name: 0.0 for name in targets}
    out: dict = {name: {"calib": {}, "shape": list(m.weight.shape)} for name, m in targets.items()}

    def hook(name):
        def fn(module, inp, _out):
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
            sums[name] += x.T @ x
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in targets.items()]
    try:
        with torch.no_grad():
            for count, ids in enumerate(windows, start=1):
                model(input_ids=ids.unsqueeze(0), use_cache=False)
                if count in checkpoints:
                    for name in targets:
                        out[name]["calib"][count] = (sums[name] / (count * ids.numel())).clone()
            for name in targets:
                sums[name].zero_()
            for ids in heldout:
                model(input_ids=ids.unsqueeze(0), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    for name, m in targets.items():
        out[name]["heldout"] = sums[name]
        out[name]["weight"] = m.weight.detach().float().clone()
        feat = torch.diag(sums[name]).sqrt()
        norms_max[name] = float(feat.max() / feat.median().clamp_min(1e-12))
        out[name]["outlier_ratio"] = norms_max[name]
    return out


def windows_of(path: str, tokenizer, block_size: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The pruning benchmark's split: (windows of the first 90% of the file, of the last 10%)."""
    from sparseft.load.data import DataConfig, load_split_records
    from sparseft.load.tokenize import tokenize_lm

    train, evals = load_split_records(DataConfig(task="lm", train=path, eval_fraction=0.1, block_size=block_size))
    as_t = lambda feats: [torch.tensor(f["input_ids"]) for f in feats]  # noqa: E731
    return (as_t(tokenize_lm(train, tokenizer, block_size=block_size)),
            as_t(tokenize_lm(evals, tokenizer, block_size=block_size)))


def analyse(stats: dict, calib_counts: list[int], reference_layers: int) -> dict:
    from sparseft.compress.prune.sparsegpt import sparsegpt_weight
    from sparseft.compress.prune.wanda import InputNorms, wanda_scores
    from sparseft.compress.prune.common import nm_mask, select_masks

    code, calibration, shape = [], [], []
    top = max(calib_counts)
    for idx, (name, st) in enumerate(stats.items()):
        W, held = st["weight"], st["heldout"]
        norms = InputNorms(torch.nn.Linear(W.shape[1], 1, bias=False))
        for label, sparsity, nm in SETTINGS:
            errs = {}
            for count in calib_counts:
                H = st["calib"][count]
                ours = sparsegpt_weight(W, 2.0 * H.float(), sparsity=sparsity, nm=nm)
                norms.sq = torch.diag(H).float() * count          # any positive scale ranks the same
                scores = wanda_scores(W, norms)
                mask = (nm_mask(scores, *nm, name=name) if nm else
                        select_masks({name: scores}, sparsity, "per_row")[name])
                wanda = W * mask
                errs[count] = {"sparsegpt": relative_error(W, ours, held), "wanda": relative_error(W, wanda, held)}
                if count == top and idx < reference_layers:
                    t0 = time.perf_counter()
                    ref = reference_sparsegpt(W, 2.0 * H, sparsity=sparsity, nm=nm)
                    ref_w = reference_wanda(W, H, sparsity=sparsity, nm=nm)
                    code.append({"layer": name, "setting": label, "calib_windows": count,
                                 "sparsegpt_max_abs_diff_vs_reference": float((ours.double() - ref).abs().max()),
                                 "weight_max_abs": float(W.abs().max()),
                                 "sparsegpt_equal_mask_share": float(((ours == 0) == (ref == 0)).double().mean()),
                                 "sparsegpt_error_ours": errs[count]["sparsegpt"],
                                 "sparsegpt_error_reference": relative_error(W, ref, held),
                                 "wanda_equal_mask_share": float(((wanda == 0) == (ref_w == 0)).double().mean()),
                                 "wanda_error_ours": errs[count]["wanda"],
                                 "wanda_error_reference": relative_error(W, ref_w, held),
                                 "reference_seconds": time.perf_counter() - t0})
            mag = W * (select_masks({name: W.abs()}, sparsity, "per_row")[name] if nm is None
                       else nm_mask(W.abs(), *nm, name=name))
            for count in calib_counts:
                calibration.append({"layer": name, "setting": label, "calib_windows": count,
                                    "sparsegpt_error": errs[count]["sparsegpt"], "wanda_error": errs[count]["wanda"]})
            shape.append({"layer": name, "setting": label, "shape": "x".join(map(str, st["shape"])),
                          "input_outlier_ratio": st["outlier_ratio"], "magnitude_error": relative_error(W, mag, held),
                          "wanda_error": errs[top]["wanda"], "sparsegpt_error": errs[top]["sparsegpt"]})
    return {"code": code, "calibration": calibration, "shape": shape}


def _mean(rows: list[dict], keys: tuple[str, ...], values: tuple[str, ...]) -> list[dict]:
    """Rows grouped by `keys` with the mean of each of `values` (first-seen group order)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return [{**dict(zip(keys, g)), "layers": len(rs), **{f"mean_{v}": sum(r[v] for r in rs) / len(rs) for v in values}}
            for g, rs in groups.items()]


def summary_tables(tables: dict, top: int) -> dict:
    """The record's tables: the code check per layer; calibration and shape averaged."""
    by_type = [{**r, "layer_type": r["layer"].split(".", 1)[1]} for r in tables["shape"]]
    shape = _mean(by_type, ("layer_type", "setting", "shape"),
                  ("input_outlier_ratio", "magnitude_error", "wanda_error", "sparsegpt_error"))
    return {"code: ours vs the float64 reference, per layer": tables["code"],
            "calibration: held-out relative output error, mean over the examined layers":
                _mean(tables["calibration"], ("setting", "calib_windows"), ("sparsegpt_error", "wanda_error")),
            f"shape: per layer type, mean over the examined blocks ({top} calibration windows)": shape}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="causal LM (alias or folder)")
    p.add_argument("--data", default=WIKI, help="text file (default: WikiText-2 wiki.valid.tokens)")
    p.add_argument("--blocks", type=int, nargs="+", default=[0, 15, 29], help="transformer blocks to examine")
    p.add_argument("--calib", type=int, nargs="+", default=[8, 32, 128, 256], help="calibration window counts")
    p.add_argument("--heldout", type=int, default=16, help="held-out windows for the errors")
    p.add_argument("--block-size", type=int, default=512, help="tokens per window")
    p.add_argument("--reference-layers", type=int, default=7,
                   help="layers (in order) also pruned by the slow float64 reference")
    args = p.parse_args()
    if args.data != WIKI:
        args.data = str(Path(args.data).resolve())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)
    if not Path(args.data).exists():
        print(f"skip: missing {args.data}")
        return 0
    from sparseft.load.model import load_model, load_tokenizer, quiet_loading
    from sparseft.utils.env import describe_environment
    from benchlib import write_json

    t0 = time.perf_counter()
    with quiet_loading():
        model = load_model(args.model, "lm").eval()
    calib, held = windows_of(args.data, load_tokenizer(args.model), args.block_size)
    counts = sorted(args.calib)
    if len(calib) < counts[-1] or len(held) < args.heldout:
        raise SystemExit(f"{args.data}: {len(calib)} calibration / {len(held)} held-out windows, "
                         f"need {counts[-1]} / {args.heldout}")
    print(f"collecting layer inputs of blocks {args.blocks} on {counts[-1]} + {args.heldout} windows", flush=True)
    stats = collect(model, args.blocks, calib[:counts[-1]], held[:args.heldout], counts)
    print("pruning each layer alone (ours, reference)", flush=True)
    tables = analyse(stats, counts, args.reference_layers)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    quick = args.model != "smollm2" or args.data != WIKI
    folder = ROOT / "benchmarks" / "runs" / "prune_reference_quick" if quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"prune_reference-{stamp}.json"
    record = {"experiment": "prune_reference", "command": " ".join(["python", "benchmarks/bench_prune_reference.py",
                                                                     *sys.argv[1:]]),
              "data": f"{args.data}: {args.block_size}-token windows; calibration = the first {counts[-1]} of the "
                      f"first 90%, errors on the first {args.heldout} of the last 10%",
              "smoke": quick, "env": describe_environment(), "wall_seconds": time.perf_counter() - t0,
              "tables": summary_tables(tables, counts[-1]), "details": tables}
    write_json(path, record)
    print(f"wrote {path}")
    for r in tables["code"]:
        print(f"  {r['layer']} {r['setting']}: max |ours - ref| {r['sparsegpt_max_abs_diff_vs_reference']:.2e} "
              f"(|W| max {r['weight_max_abs']:.2f}), error ours {r['sparsegpt_error_ours']:.4f} "
              f"ref {r['sparsegpt_error_reference']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

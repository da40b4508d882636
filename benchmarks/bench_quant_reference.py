"""Why int4 GPTQ only narrowly beats int4 round-to-nearest on SmolLM2: the code or the grid?

    python benchmarks/bench_quant_reference.py                    # SmolLM2-135M, blocks 0 / 15 / 29
    python benchmarks/bench_quant_reference.py --model M --data F --blocks 0 --calib 4 --heldout 2 \\
        --block-size 64 --reference-layers 1                      # smoke test on a tiny model

The layer-wise question of bench_prune_reference.py, for quantization: the inputs of each Linear
layer of the chosen blocks are collected from the *dense* model on WikiText-2 windows (calibration
= the first `--calib` windows of the file's first 90%, held out = the first `--heldout` windows of
the last 10%), and each layer is quantized alone from them. Per grid (int4, group 128, symmetric
as GPTQConfig's default and asymmetric):

  code    our `gptq_quantize` against a straightforward reference written from the OBS update
          (float64, one column at a time, the explicit inverse-Hessian downdate instead of the
          Cholesky factor, no lazy blocks; the same grid functions and group scales taken when a
          group's first column is reached): the share of equal codes, the largest weight
          difference, both errors.
  errors  the held-out relative output error ||(W - W')X||^2 / ||WX||^2 of RTN and GPTQ per layer,
          so GPTQ's gain over RTN is read per layer type and per grid.

One JSON record goes to benchmarks/results/quant_reference-<UTC stamp>.json (smoke runs: under
benchmarks/runs/quant_reference_quick/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_prune_reference import WIKI, collect, relative_error, windows_of  # noqa: E402
from benchlib import utc_stamp, write_json  # noqa: E402

GRIDS = (("int4 g128 sym", True), ("int4 g128 asym", False))


@torch.no_grad()
def reference_gptq(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int, symmetric: bool,
                   group_size: int, damp: float = 0.01) -> torch.Tensor:
    """GPTQ written plainly from the OBS update, in float64; returns the dequantized weight.

    Column j is rounded on its group's grid (scale and zero from the group's current, already
    updated weights when its first column is reached); its error err = (w - q) / Hinv[j, j] is
    spread over the columns not yet quantized, W[:, j:] -= err Hinv[j, j:]; then Hinv is downdated
    to drop column j: Hinv -= Hinv[:, j] Hinv[j, :] / Hinv[j, j]. Inputs never seen (H_jj = 0)
    get H_jj = 1, and the dampening damp * mean(diag H) is added, as in the paper's code.
    """
    from sparseft.compress.quantize.pack import affine_params, dequantize_codes, quantize_codes

    W = weight.double().clone()
    H = hessian.double().clone()
    diag = torch.diagonal(H)
    diag[diag == 0] = 1.0
    diag += damp * float(diag.mean())
    Hinv = torch.linalg.inv(H)
    rows, cols = W.shape
    out = torch.empty_like(W)
    for j in range(cols):
        if j % group_size == 0:
            scale, zero = affine_params(W[:, j:j + group_size], bits, symmetric)
        codes = quantize_codes(W[:, j], scale, zero, bits, symmetric)
        q = dequantize_codes(codes, scale, zero).double()
        err = (W[:, j] - q) / Hinv[j, j]
        W[:, j:] -= torch.outer(err, Hinv[j, j:])
        out[:, j] = q
        Hinv -= torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    return out


def ours_and_rtn(W: torch.Tensor, H: torch.Tensor, symmetric: bool, group_size: int):
    """(our GPTQ's dequantized weight, its codes, RTN's dequantized weight) on the same grid."""
    from sparseft.compress.quantize.gptq import gptq_quantize
    from sparseft.compress.quantize.pack import dequantize_codes, expand_groups, quantize_uniform

    def decode(codes, scale, zero, gs):
        cols = codes.shape[1]
        return dequantize_codes(codes, expand_groups(scale, gs, cols), expand_groups(zero, gs, cols))

    codes, scale, zero, gs = gptq_quantize(W, H, bits=4, symmetric=symmetric, granularity="group",
                                           group_size=group_size)
    rtn = quantize_uniform(W, 4, symmetric, "group", group_size)
    return decode(codes, scale, zero, gs), codes, decode(*rtn)


def analyse(stats: dict, count: int, reference_layers: int, group_size: int = 128) -> dict:
    code, errors = [], []
    for idx, (name, st) in enumerate(stats.items()):
        W, H, held = st["weight"], st["calib"][count], st["heldout"]
        for label, symmetric in GRIDS:
            ours, ours_codes, rtn = ours_and_rtn(W, H, symmetric, group_size)
            e_rtn, e_ours = relative_error(W, rtn, held), relative_error(W, ours, held)
            errors.append({"layer": name, "layer_type": name.split(".", 1)[1], "grid": label,
                           "shape": "x".join(map(str, st["shape"])), "rtn_error": e_rtn, "gptq_error": e_ours,
                           "gptq_over_rtn": e_ours / e_rtn if e_rtn else None})
            if idx < reference_layers:
                t0 = time.perf_counter()
                ref = reference_gptq(W, H, bits=4, symmetric=symmetric, group_size=group_size)
                code.append({"layer": name, "grid": label, "calib_windows": count,
                             "equal_value_share": float((ours.double() - ref).abs().le(1e-6).double().mean()),
                             "max_abs_diff_vs_reference": float((ours.double() - ref).abs().max()),
                             "weight_max_abs": float(W.abs().max()),
                             "gptq_error_ours": e_ours, "gptq_error_reference": relative_error(W, ref, held),
                             "rtn_error": e_rtn, "reference_seconds": time.perf_counter() - t0})
    return {"code": code, "errors": errors}


def by_type(errors: list[dict]) -> list[dict]:
    """Mean errors per (layer type, grid), first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for r in errors:
        groups.setdefault((r["layer_type"], r["grid"], r["shape"]), []).append(r)
    return [{"layer_type": t, "grid": g, "shape": s, "layers": len(rs),
             "mean_rtn_error": sum(r["rtn_error"] for r in rs) / len(rs),
             "mean_gptq_error": sum(r["gptq_error"] for r in rs) / len(rs),
             "mean_gptq_over_rtn": sum(r["gptq_over_rtn"] or 0 for r in rs) / len(rs)}
            for (t, g, s), rs in groups.items()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="causal LM (alias or folder)")
    p.add_argument("--data", default=WIKI, help="text file (default: WikiText-2 wiki.valid.tokens)")
    p.add_argument("--blocks", type=int, nargs="+", default=[0, 15, 29], help="transformer blocks to examine")
    p.add_argument("--calib", type=int, default=128, help="calibration windows (GPTQ's 128 by default)")
    p.add_argument("--heldout", type=int, default=16, help="held-out windows for the errors")
    p.add_argument("--block-size", type=int, default=512, help="tokens per window")
    p.add_argument("--reference-layers", type=int, default=7,
                   help="layers (in order) also quantized by the slow float64 reference")
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

    t0 = time.perf_counter()
    with quiet_loading():
        model = load_model(args.model, "lm").eval()
    calib, held = windows_of(args.data, load_tokenizer(args.model), args.block_size)
    if len(calib) < args.calib or len(held) < args.heldout:
        raise SystemExit(f"{args.data}: {len(calib)} calibration / {len(held)} held-out windows, "
                         f"need {args.calib} / {args.heldout}")
    print(f"collecting layer inputs of blocks {args.blocks} on {args.calib} + {args.heldout} windows", flush=True)
    stats = collect(model, args.blocks, calib[:args.calib], held[:args.heldout], [args.calib])
    print("quantizing each layer alone (RTN, ours, reference)", flush=True)
    tables = analyse(stats, args.calib, args.reference_layers)
    quick = args.model != "smollm2" or args.data != WIKI
    folder = ROOT / "benchmarks" / "runs" / "quant_reference_quick" if quick else RESULTS
    record = {"experiment": "quant_reference",
              "command": " ".join(["python", "benchmarks/bench_quant_reference.py", *sys.argv[1:]]),
              "data": f"{args.data}: {args.block_size}-token windows; calibration = the first {args.calib} of the "
                      f"first 90%, errors on the first {args.heldout} of the last 10%",
              "smoke": quick, "env": describe_environment(), "wall_seconds": time.perf_counter() - t0,
              "tables": {"code: our GPTQ vs the float64 reference, per layer": tables["code"],
                         "errors: held-out relative output error per layer type (mean over the blocks)":
                             by_type(tables["errors"])},
              "details": tables}
    path = write_json(folder / f"quant_reference-{utc_stamp()}.json", record)
    print(f"wrote {path}")
    for r in tables["code"]:
        print(f"  {r['layer']} {r['grid']}: equal {r['equal_value_share']:.4f}, max |ours - ref| "
              f"{r['max_abs_diff_vs_reference']:.2e}; error ours {r['gptq_error_ours']:.5f} "
              f"ref {r['gptq_error_reference']:.5f} rtn {r['rtn_error']:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

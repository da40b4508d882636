"""benchmarks/sweep_chat.py and bench_chat.py's recipes (nothing is trained): the sweep scores on a
slice held out of train.jsonl, never on validation.jsonl; each mode gets the same grid size; the
benchmark itself runs the shipped chat defaults."""

from __future__ import annotations

import argparse

from bench_scripts import load_bench

from sparseft.config.recipe import Recipe
from sparseft.methods import build_stage_config
from sparseft.train.defaults import DEFAULT_LR


def _args(**kw):
    return argparse.Namespace(**{"model": "smollm2", "heldout": 150, "smoke": False, **kw})


def test_sweep_rows_score_a_heldout_slice_of_train_at_the_row_lr(tmp_path):
    sweep = load_bench("sweep_chat")
    assert len({len(grid) for grid in sweep.GRIDS.values()}) == 1, "the same grid size for every mode"
    for mode in sweep.GRIDS:
        recipe = sweep.row_recipe(mode, 1.5e-3, tmp_path / mode, _args())
        assert recipe["data"]["eval"] == "" and recipe["data"]["eval_limit"] == 150
        assert "validation" not in str(recipe)
        data_stage = recipe["stages"][0]
        assert data_stage["method"] == "chat_data" and data_stage["eval_fraction"] == 0.1
        sft = next(st for st in recipe["stages"] if st["method"] == "chat_sft")
        assert sft["mode"] == mode and sft["train"]["lr"] == 1.5e-3 and sft["train"]["eval_every"] == "never"
        assert [st["name"] for st in recipe["stages"]][-1] == "heldout"
        parsed = Recipe.from_dict(recipe)
        for stage in parsed.stages:
            build_stage_config(stage, parsed)


def test_best_lr_per_mode_is_the_lowest_heldout_loss():
    sweep = load_bench("sweep_chat")
    rows = [{"mode": "sparse", "lr": 2e-4, "heldout_response_loss": 2.9},
            {"mode": "sparse", "lr": 1e-3, "heldout_response_loss": 2.7},
            {"mode": "sparse", "lr": 3e-3, "error": 1},
            {"mode": "full", "lr": 2e-5, "heldout_response_loss": 2.6}]
    assert sweep.best_per_mode(rows) == {"sparse": {"lr": 1e-3, "heldout_response_loss": 2.7},
                                         "full": {"lr": 2e-5, "heldout_response_loss": 2.6}}


def test_the_chat_benchmark_runs_the_shipped_defaults():
    bench = load_bench("bench_chat")
    args = argparse.Namespace(**bench.DEFAULTS)
    for part, key in (("full", "chat_full"), ("sparse", "chat_sparse"), ("lora", "chat_lora")):
        recipe = bench.recipe_for(part, args)
        assert recipe["data"]["eval"].endswith("validation.jsonl")
        sft = next(st for st in recipe["stages"] if st["method"] == "chat_sft")
        assert sft["train"]["lr"] == DEFAULT_LR[key]
        assert "mask" not in sft and "mixed_precision" not in sft["train"], "the stage's own defaults"

"""`sparseft moefy` (and so the `moefy` recipe stage) end to end on a tiny BERT, then its folder loads back.

The verb's parser is built here from cli/moefy_cmd.py alone (cli/main.py lists it in COMMANDS).
"""

from __future__ import annotations

import argparse
import json

import pytest


def main(argv: list[str]) -> int:
    from sparseft.cli import moefy_cmd

    parser = argparse.ArgumentParser(prog="sparseft")
    moefy_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_moefy_end_to_end(tiny_bert_dir, toy_ner_files, tmp_path):
    import sparseft
    from sparseft.experts import expert_layers

    train, dev = toy_ner_files
    out = tmp_path / "moe"
    rc = main(["moefy", "--model", str(tiny_bert_dir), "--task", "ner", "--train", str(train), "--eval", str(dev),
               "--experts", "4", "--top-k", "2", "--router", "mlp", "--set", "router_steps=20",
               "--set", "router_hidden=16", "--calib-samples", "8", "--max-length", "32", "--no-cost", "-o", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    section = metrics.get("sections", metrics).get("moefy") or metrics["stages"]["moefy"]
    assert section["num_experts"] == 4 and section["router_kind"] == "mlp"
    assert "delta_f1" in section and section["router"]["loss_after"] < section["router"]["loss_before"]
    assert section["active_flops_share"] == 0.5            # 2 of 4 experts per token
    stage = json.loads((out / "moefy" / "experts.json").read_text())
    assert stage["top_k"] == 2
    loaded = sparseft.load(str(out / "model"))
    layers = expert_layers(loaded)
    assert len(layers) == 2 and all(l.top_k == 2 and not l.oracle for _, l in layers)
    with pytest.raises(ValueError, match="need calibration data"):
        main(["moefy", "--model", str(tiny_bert_dir), "--task", "ner", "--router", "mlp", "-o", str(tmp_path / "x")])


def test_shipped_moefy_recipe_builds():
    from pathlib import Path

    from sparseft.config.recipe import load_recipe
    from sparseft.methods import build_stage_config

    path = Path(__file__).resolve().parents[2] / "recipes" / "minilm_conll2003_moefy.yaml"
    assert path.read_text().splitlines()[0].startswith(f"# sparseft run recipes/{path.name}")
    recipe = load_recipe(path)
    method, cfg = build_stage_config(recipe.stages[0], recipe)
    assert method.name == "moefy" and cfg.build().num_experts == 16 and cfg.build().router == "mlp"

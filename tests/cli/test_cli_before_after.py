"""Every compression verb with data scores the input model first and reports the deltas
(issue 14 item 8): metric and size before -> after, printed and in metrics.json."""

from __future__ import annotations

import json

import pytest

from sparseft.cli.main import main

VERBS = {
    "prune": ["--method", "magnitude", "--sparsity", "0.5"],
    "quantize": ["--method", "rtn", "--set", "bits=4", "--set", "granularity=group", "--set", "group_size=16"],
    "factorize": ["--method", "svd", "--rank", "4"],
}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_compression_verb_reports_before_and_after(verb, run_dir, data, tmp_path, capsys):
    train, dev = data
    out = tmp_path / verb
    capsys.readouterr()
    rc = main([verb, "--model", str(run_dir / "model"), "--train", str(train), "--eval", str(dev), "--task", "ner",
               "--no-cost", "--calib-samples", "4", "-o", str(out), *VERBS[verb]])
    assert rc == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{verb} before -> after")]
    assert len(printed) == 1 and "f1 " in printed[0] and "weights " in printed[0], printed
    stages = json.loads((out / "metrics.json").read_text())["stages"]
    import yaml

    order = [st["name"] for st in yaml.safe_load((out / "recipe.yaml").read_text())["stages"]]
    assert order[:3] == ["before", verb, "dev"]
    sec = stages["dev"]
    assert sec["metric"] == "f1"
    assert sec["f1_before"] == pytest.approx(stages["before"]["f1"])
    assert sec["f1_after"] == pytest.approx(sec["f1"])
    assert sec["delta_f1"] == pytest.approx(sec["f1_after"] - sec["f1_before"])
    assert sec["weights_mb_before"] == pytest.approx(stages["before"]["size"]["weights_mb"])
    if verb == "prune":   # zeros, dense storage
        assert sec["nonzero_params_after"] < 0.8 * sec["nonzero_params_before"]
    else:                 # packed int4 / smaller factors
        assert sec["weights_mb_after"] < sec["weights_mb_before"]


def test_without_data_there_is_no_before_stage(run_dir, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["prune", "--model", str(run_dir / "model"), "--sparsity", "0.5", "--no-cost", "-o", str(out)]) == 0
    assert "before -> after" not in capsys.readouterr().out
    assert "before" not in json.loads((out / "metrics.json").read_text())["stages"]


def test_compare_to_needs_an_earlier_eval_stage_with_size():
    from sparseft.eval.stage import EvalConfig, eval_stage

    with pytest.raises(ValueError, match="compare_to='nope'"):
        eval_stage(_ctx_with_model(), EvalConfig(compare_to="nope", cost=False), "dev")


def _ctx_with_model():
    """A minimal run context whose evaluate() never runs (the check comes first)."""
    import torch

    class Data:
        task, eval, labels = "ner", [], []

    class Ctx:
        model = torch.nn.Linear(2, 2)
        data, state, pad_id, tokenizer = Data(), {}, 0, None

    return Ctx()

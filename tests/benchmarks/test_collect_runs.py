"""benchmarks/collect_runs.py: run folders -> one record (no model is run)."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml

from bench_scripts import load_bench

BASE = {"model": "minilm", "data": {"task": "ner", "train": "t.txt", "eval": "dev.txt", "train_limit": None},
        "output_dir": "runs/x", "stages": [{"name": "dense", "method": "eval"},
                                            {"name": "gradual", "method": "prune_finetune", "lr": 1.0e-4,
                                             "epochs": 2, "distill": True},
                                            {"name": "dev", "method": "eval"}]}


def _run_folder(tmp_path, name, *, lr, f1s, base=BASE):
    folder = tmp_path / name
    folder.mkdir()
    resolved = json.loads(json.dumps(base))
    resolved["model"] = "teacher/model"
    resolved["data"]["eval"] = ""
    resolved["output_dir"] = str(folder)
    resolved["stages"][1]["lr"] = lr
    (folder / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    stages = {"load": {"train_examples": 4000}, "dense": {"method": "eval", "f1": f1s[0]},
              "gradual": {"method": "prune_finetune", "steps": 500, "seconds_per_step": 0.5},
              "dev": {"method": "eval", "f1": f1s[1]}}
    (folder / "metrics.json").write_text(json.dumps({
        "env": {"commit": "abcdef0123456789", "dirty": False, "date": "2026-12-03 15:39 UTC"},
        "stage_order": ["load", "dense", "gradual", "dev"], "stages": stages}))
    return folder


def test_rows_carry_the_overrides_the_scores_and_a_command_that_reproduces_the_run(tmp_path, monkeypatch):
    bench = load_bench("collect_runs")
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(BASE, sort_keys=False))
    a = _run_folder(tmp_path, "lr0.001", lr=1.0e-3, f1s=[0.93, 0.84])
    b = _run_folder(tmp_path, "lr0.0001", lr=1.0e-4, f1s=[0.93, 0.55])   # at the recipe's lr
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)  # main() runs from ROOT (benchlib.prepare); restored after the test
    assert bench.main(["sel", str(a), str(b), "--recipe", str(recipe), "--description", "held-out"]) == 0
    (path,) = (tmp_path / "results").glob("sel-*.json")
    record = json.loads(path.read_text())
    r, at_default = record["rows"]
    assert record["experiment"] == "sel" and record["env"]["commit"] == "abcdef0123456789"
    assert (r["run"], r["train_examples"], r["steps"], r["lr"], r["model"]) == ("lr0.001", 4000, 500, 1.0e-3, "teacher/model")
    assert r["start_f1"] == 0.93 and r["f1"] == 0.84 and r["delta_f1"] == pytest.approx(-0.09)
    assert "epochs" not in r and "distill" not in r  # unchanged from the recipe: no column, no override
    argv = shlex.split(r["command"])
    assert argv[:3] == ["sparseft", "run", str(recipe)]
    assert set(argv[3:]) == {"model=teacher/model", "data.eval=", "stages.gradual.lr=0.001", f"output_dir={a}"}
    assert at_default["lr"] == 1.0e-4 and "_settings" not in at_default   # the column is filled, not blank
    assert "stages.gradual.lr" not in at_default["command"] and list(at_default)[:4] == ["run", "train_examples",
                                                                                          "steps", "model"]


def test_a_folder_without_metrics_is_an_error_naming_it(tmp_path, monkeypatch):
    bench = load_bench("collect_runs")
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(BASE))
    (tmp_path / "half").mkdir()
    with pytest.raises(SystemExit, match=r"half/metrics.json: missing"):
        bench.main(["sel", str(tmp_path / "half"), "--recipe", str(recipe)])
    with pytest.raises(SystemExit, match=r"nope.yaml: no such recipe"):
        bench.main(["sel", f"{tmp_path / 'half'}@{tmp_path / 'nope.yaml'}", "--recipe", str(recipe)])

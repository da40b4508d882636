"""Run reports with plots, and `sparseft compare` on two tiny runs (full vs sparse fine-tuning)."""

import json

import pytest

import argparse

from sparseft.cli import compare_cmd
from sparseft.config.recipe import Recipe
from sparseft.demo.toy_ner import write_toy_ner
from sparseft.pipeline import run
from sparseft.report.runs import load_run, run_points

PNG = b"\x89PNG\r\n\x1a\n"


def compare_cli(argv):
    """`sparseft compare ...` through the verb's own parser (cli/main.py adds it to COMMANDS)."""
    parser = argparse.ArgumentParser()
    compare_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", *argv])
    return args.func(args)
FAST = {"max_steps": 4, "batch_size": 8, "progress": False, "log_every": 1, "eval_every": 2, "resume": False}


def _run(model_dir, data_dir, out, train_stage):
    train, dev = data_dir / "train.conll", data_dir / "dev.conll"
    recipe = Recipe.from_dict({
        "model": str(model_dir), "output_dir": str(out),
        "data": {"task": "ner", "train": str(train), "eval": str(dev), "max_length": 32},
        "stages": [{"name": "finetune", **train_stage, **FAST}, {"name": "dev", "method": "eval", "repeats": 1},
                   {"name": "save", "method": "save"}]})
    run(recipe, print_report=False)
    return out


@pytest.fixture(scope="module")
def two_runs(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    write_toy_ner(root / "data", n_train=32, n_dev=16)
    full = _run(tiny_bert_dir, root / "data", root / "full", {"method": "train", "lr": 1e-3})
    sparse = _run(tiny_bert_dir, root / "data", root / "sparse",
                  {"method": "sft", "mask": "magnitude", "density": 0.05, "lr": 1e-2})
    return full, sparse


def test_run_report_has_plots_and_data(two_runs):
    full, sparse = two_runs
    md = (sparse / "report.md").read_text()
    assert "![Training curves](curves.png)" in md and "![Size breakdown](size_breakdown.png)" in md
    assert (sparse / "curves.png").read_bytes()[:8] == PNG
    curves = json.loads((sparse / "curves.json").read_text())["series"]
    assert [s for s, _ in curves["finetune"]["train"]] == [1, 2, 3, 4]
    assert [s for s, _ in curves["finetune"]["eval"]] == [2, 4] and curves["finetune"]["metric"] == "f1"
    layers = json.loads((sparse / "per_layer.json").read_text())["series"]
    assert list(layers) == ["finetune (trained entries)"] and len(layers["finetune (trained entries)"]["values"]) == 12
    html = (sparse / "report.html").read_text()
    assert html.count("data:image/png;base64,") == md.count("![")
    # metrics.json keeps the stage order (its keys are sorted)
    assert json.loads((full / "metrics.json").read_text())["stage_order"] == ["load", "finetune", "dev", "save"]


def test_points_pick_the_shipped_artifact(two_runs):
    full, sparse = two_runs
    (pf,) = run_points(load_run(full))
    (ps,) = run_points(load_run(sparse))
    assert (pf.kind, pf.artifact, ps.kind, ps.artifact) == ("full", "model folder", "sparse", "sparse diff")
    assert ps.artifact_mb < pf.artifact_mb and ps.trainable_params < pf.trainable_params
    assert pf.latency_ms_b1 > 0 and pf.throughput_b32 > 0 and pf.train_seconds > 0 and pf.peak_memory_mb > 0


def test_compare_cli_table_and_pareto_plots(two_runs, tmp_path, capsys):
    full, sparse = two_runs
    out = tmp_path / "cmp"
    assert compare_cli([str(full), str(sparse / "metrics.json"), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "full" in text and "sparse diff" in text and "throughput b32" in text
    for name in ("pareto_size", "pareto_speed", "curves", "size_breakdown"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG, name
    size = json.loads((out / "pareto_size.json").read_text())
    assert {p["label"] for p in size["points"]} == {"full", "sparse"}
    assert {p["kind"] for p in size["points"]} == {"full", "sparse"}
    assert "sparse" in size["front"]                    # the smallest artifact is always on the front
    assert set(json.loads((out / "curves.json").read_text())["series"]) == {"full: finetune", "sparse: finetune"}
    rows = json.loads((out / "comparison.json").read_text())["points"]
    assert [r["label"] for r in rows] == ["full", "sparse"]
    assert "| model | f1 |" in (out / "report.md").read_text() and (out / "report.html").exists()


def test_compare_reads_benchmark_records_and_refuses_bad_input(two_runs, tmp_path, capsys):
    rec = tmp_path / "bench.json"
    rec.write_text(json.dumps({"experiment": "prune_x", "rows": [
        {"run": "a", "f1": 0.8, "cost": {"size_mb": 10.0, "throughput_seq_s_b32": 50.0}},
        {"run": "b", "f1": 0.7, "size_bytes": 2**20, "throughput_seq_s_b32": 90.0},
        {"run": "c", "kernel": "no headline metric"}]}))
    pts = run_points(load_run(rec))
    assert [(p.label, p.artifact_mb) for p in pts] == [("prune_x/a", 10.0), ("prune_x/b", 1.0)]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"something": 1}))
    with pytest.raises(ValueError, match="neither `stages`"):      # the CLI prints it as one line, exit 2
        compare_cli([str(bad)])
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        compare_cli([str(tmp_path / "missing")])

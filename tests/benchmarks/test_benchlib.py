"""benchmarks/benchlib.py: the driver pieces every benchmark shares (child rows, grids, the best
value per key, part loops, records). Children here are tiny Python scripts, no model."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from bench_scripts import load_bench


@pytest.fixture()
def lib():
    return load_bench("benchlib")


def test_best_by_picks_per_key_skips_failed_rows_and_keeps_the_first_tie(lib):
    rows = [{"mode": "a", "lr": 1.0, "loss": 2.0}, {"mode": "a", "lr": 2.0, "loss": 1.5},
            {"mode": "a", "lr": 3.0, "error": 1}, {"mode": "b", "lr": 1.0, "loss": 3.0},
            {"mode": "b", "lr": 2.0, "loss": 3.0}]
    assert lib.best_by(rows, "mode", "loss", minimize=True) == {"a": {"lr": 2.0, "loss": 1.5},
                                                                  "b": {"lr": 1.0, "loss": 3.0}}
    assert lib.best_by(rows, "mode", "loss") == {"a": {"lr": 1.0, "loss": 2.0}, "b": {"lr": 1.0, "loss": 3.0}}
    assert lib.best_by([{"mode": "a", "lr": 1.0, "error": 2}], "mode", "loss") == {}


GRID_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    _, flag, key, lr, out, *extra = sys.argv
    assert flag == "--child"
    if key == "broken":
        sys.exit(3)
    Path(out).mkdir(parents=True)
    Path(out, "row.json").write_text(json.dumps({"method": key, "lr": float(lr), "extra": extra}))
""")


def test_run_grid_runs_one_child_per_value_in_order_and_keeps_going_after_a_failure(lib, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(GRID_CHILD)
    grids = {"x": (1e-3, 3e-3), "broken": (0.1,), "y": (5e-5,)}
    rows = lib.run_grid(str(script), ["x", "broken", "y"], lambda k: grids[k], tmp_path / "runs", ["--flag", "v"])
    assert rows == [{"method": "x", "lr": 1e-3, "extra": ["--flag", "v"]},
                    {"method": "x", "lr": 3e-3, "extra": ["--flag", "v"]},
                    {"method": "broken", "lr": 0.1, "error": 3},
                    {"method": "y", "lr": 5e-5, "extra": ["--flag", "v"]}]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["x-lr0.001", "x-lr0.003", "y-lr5e-05"]


def test_result_child_parses_the_last_result_line_or_reports_the_last_stderr_line(lib, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        if sys.argv[1] == "bad":
            print("RESULT {}", flush=True)
            sys.exit("row bad: missing data file x.csv")
        print("noise")
        print("RESULT " + json.dumps({"row": sys.argv[1], "score": 1}))
        print("RESULT " + json.dumps({"row": sys.argv[1], "score": 2}))
    """))
    good = lib.result_child(str(script), ["good"], "good", command="c")
    assert good["score"] == 2 and good["command"] == "c" and good["wall_seconds"] >= 0
    bad = lib.result_child(str(script), ["bad"], "bad", command="c")
    assert bad["row"] == "bad" and bad["error"] == "row bad: missing data file x.csv" and "score" not in bad


def test_run_parts_counts_failed_rows_across_the_records(lib, tmp_path):
    records = {"a": {"rows": [{"run": 1}]}, "b": {"rows": [{"run": 2, "error": "x"}]}}

    def run_part(part, args):
        if part == "none":
            return None
        return lib.write_json(tmp_path / f"{part}.json", records[part])

    assert lib.run_parts(["a", "none"], run_part, None) == 0
    assert lib.run_parts(["a", "b"], run_part, None) == 1


def test_write_records_writes_the_json_and_the_table_beside_it(lib, tmp_path):
    path = lib.write_records(tmp_path / "results", "sft", {"cpu": "x"}, [{"row": "r"}], "| r |\n")
    assert path.name.startswith("sft-") and path.suffix == ".json"
    assert json.loads(path.read_text()) == {"env": {"cpu": "x"}, "records": [{"row": "r"}]}
    assert path.with_suffix(".md").read_text() == "| r |\n"


def test_prepare_sets_offline_and_the_cwd(lib, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(os.getcwd())  # restored after the test
    lib.prepare(tmp_path)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.getcwd() == str(tmp_path)


@pytest.mark.parametrize("script", ["bench_precision", "bench_quant"])
def test_precision_and_quant_share_the_data_and_timing_flags(lib, script):
    """Both scripts take their common flags from benchlib (one definition): same names and defaults."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / f"{script}.py"), "--help"],
                         capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--eval-limit", "--calib-samples", "--conll-dev", "--conll-train", "--lm-model", "--wiki",
                 "--windows", "--calib-windows", "--window-len", "--seq-len", "--repeats", "--threads"):
        assert flag in out.stdout, flag
    import argparse

    p = argparse.ArgumentParser()
    lib.add_model_eval_args(p, calib_samples_help="a", conll_train_help="b", calib_windows_help="c")
    lib.add_timing_args(p)
    args = p.parse_args([])
    assert (args.conll_dev, args.wiki, args.windows, args.calib_windows, args.repeats, args.threads) == (
        lib.CONLL_DEV, lib.WIKI, 48, 32, 10, 0)

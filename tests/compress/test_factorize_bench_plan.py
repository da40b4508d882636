"""The factorization benchmark's run plan: every run is a valid recipe whose stage configs
validate, with the protocol's sizes and calibration (nothing heavy runs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import sparseft.compress.factorize.stage  # noqa: F401  the stages (also imported by sparseft.methods)

from bench_scripts import load_bench

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    return load_bench("bench_factorize")


def _args(bench, **kw):
    base = dict(methods=list(bench.METHODS), ratios=None, epochs=1, teacher=bench.TEACHER, lm_model="smollm2",
                lm_data="", no_pruning=False, limit=0, reuse=None)
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("limit", [0, 16])
def test_every_planned_run_is_a_valid_recipe(limit):
    from sparseft.config.recipe import load_recipe
    from sparseft.methods import build_stage_config

    bench = _bench()
    counts = {}
    for part in bench.PARTS:
        runs = bench.plan(part, _args(bench, limit=limit))
        counts[part] = len(runs)
        for run in runs:
            recipe = load_recipe(ROOT / run["recipe"], run["overrides"])
            for stage in recipe.stages:
                build_stage_config(stage, recipe)
            assert recipe.output_dir.endswith(run["name"])
    assert counts == {"minilm": 12, "smollm2": 1 + 12 + 6}


def test_protocol_sizes_calibration_and_equal_storage():
    from sparseft.config.recipe import load_recipe

    bench = _bench()
    runs = {r["name"]: r for r in bench.plan("smollm2", _args(bench))}
    fz = load_recipe(ROOT / runs["smollm2_whiten_svd_20"]["recipe"], runs["smollm2_whiten_svd_20"]["overrides"])
    stage = fz.stages[0].params
    assert stage["factorizer_args"] == {"ratio": 0.2} and stage["calib_samples"] == 128
    assert fz.data.block_size == 512 and fz.data.eval_limit == 48
    pr = runs["smollm2_sparsegpt_size20"]
    params = load_recipe(ROOT / pr["recipe"], pr["overrides"]).stages[0].params
    assert params["pruner_args"] == {"sparsity": pytest.approx(0.2 + 1 / 32)} and params["calib_samples"] == 128
    minilm = bench.plan("minilm", _args(bench, methods=["fisher_svd"], ratios=[0.3], epochs=2))
    assert len(minilm) == 1
    rec = load_recipe(ROOT / minilm[0]["recipe"], minilm[0]["overrides"])
    st = rec.stages[0].params
    assert st["factorizer"] == "fisher_svd" and st["epochs"] == 2 and st["distill"] is True
    assert json.loads(json.dumps(st["factorizer_args"])) == {"ratio": 0.3, "targets": [r"re:encoder\.layer"]}
    assert rec.model == bench.TEACHER


def test_the_record_is_rewritten_after_every_run_and_says_whether_it_is_complete(tmp_path):
    bench = _bench()
    args, path = _args(bench), tmp_path / "factorize_minilm-x.json"
    rows = [{"run": "minilm_svd_20", "method": "svd", "ratio": 0.2, "f1": 0.9, "delta_f1": -0.01}]
    bench.write_record(path, "minilm", args, rows, [{"run": "minilm_svd_20"}], 0.0, planned=2)
    first = json.loads(path.read_text())
    assert (first["complete"], first["runs_done"], first["runs_planned"]) == (False, 1, 2)
    rows.append({"run": "minilm_asvd_20", "method": "asvd", "ratio": 0.2, "error": "exit code 1"})
    bench.write_record(path, "minilm", args, rows, [{}, {}], 0.0, planned=2)
    done = json.loads(path.read_text())
    assert done["complete"] is True and [r["run"] for r in done["rows"]] == ["minilm_svd_20", "minilm_asvd_20"]
    assert not list(tmp_path.glob("*.tmp"))


def _fake_result(spec):
    return {"wall_seconds": 1.0, "stages": {"recover": {"dense_f1": 0.9, "f1_after_factorize": 0.8},
                                            "dev": {"f1": 0.89 if "asvd" in spec["name"] else 0.88}}}


def test_reuse_keeps_a_stopped_runs_rows_with_the_same_command_and_runs_the_rest(tmp_path, monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "needs", lambda part, args: [])
    ran = []
    monkeypatch.setattr(bench, "run_in_child", lambda spec: ran.append(spec["name"]) or _fake_result(spec))
    small = dict(methods=["svd", "asvd"], teacher="T")
    first = bench.run_part("minilm", _args(bench, ratios=[0.3], **small))
    assert ran == ["minilm_svd_30", "minilm_asvd_30"]
    old = json.loads(first.read_text())
    old["rows"][1]["error"] = "killed"                             # a failed row is run again
    first.unlink()
    first = tmp_path / "factorize_minilm-20000101T000000.json"    # older than the next run's stamp
    first.write_text(json.dumps(old))

    ran.clear()
    second = bench.run_part("minilm", _args(bench, ratios=[0.2, 0.3], reuse=first, **small))
    assert ran == ["minilm_svd_20", "minilm_asvd_20", "minilm_asvd_30"]
    rec = json.loads(second.read_text())
    assert rec["complete"] and rec["runs_done"] == 4 and rec["reused"]["record"] == first.name
    by = {r["run"]: r for r in rec["rows"]}
    assert by["minilm_svd_30"]["reused_from"] == first.name and "reused_from" not in by["minilm_asvd_30"]
    assert by["minilm_asvd_30"]["delta_f1"] == pytest.approx(-0.01)
    ran.clear()                                                    # another teacher: nothing is reused
    bench.run_part("minilm", _args(bench, ratios=[0.3], reuse=second, methods=["svd"], teacher="U"))
    assert ran == ["minilm_svd_30"]


def test_reuse_refuses_another_experiments_record(tmp_path):
    other = tmp_path / "prune_lm-1.json"
    other.write_text(json.dumps({"experiment": "prune_lm", "rows": []}))
    with pytest.raises(SystemExit, match="is not factorize_minilm"):
        _bench().reusable("minilm", other)

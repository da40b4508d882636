"""benchmarks/bench_headline.py: every row's command is a valid `sparseft train` command line that
names its method and budget and no learning rate (rows run with the shipped defaults), and the
targets / size ratios are computed from the rows present (no training here)."""

from __future__ import annotations

import json
import sys

import pytest

from bench_scripts import load_bench


def _bench():
    return load_bench("bench_headline")


@pytest.mark.parametrize("task", ["conll", "banking"])
def test_every_row_is_a_valid_train_command_without_lr(task):
    from sparseft.cli.main import build_parser

    bench = _bench()
    rows = bench.rows_of(task)
    assert len(rows) == len(set(rows)) == 1 + 2 * len(bench.MASKS) + 2 + 2   # + sft fisher/lottery at r3
    parser = build_parser()
    for row in rows:
        cmd = bench.command_for(row, smoke=False)
        assert cmd[:2] == ["sparseft", "train"] and "--lr" not in cmd
        ns = parser.parse_args(cmd[1:])
        assert ns.eval_every == "never" and ns.overwrite
        assert bench.run_dir(row, smoke=True) != bench.run_dir(row, smoke=False)   # a smoke run's checkpoint never blocks the row
        kind = row.split(":")[1]
        assert ns.method == {"full": "train", "sft": "sft", "lora": "lora"}[kind]
        if row.endswith(":r8"):
            assert (ns.match_lora_rank if kind == "sft" else ns.lora_rank) == 8
        if row.endswith(":r3"):
            assert kind == "sft" and ns.match_lora_rank == 3 and ns.density is None
        if kind == "sft":
            assert ns.mask == row.split(":")[2]


def test_targets_and_size_ratio_from_the_rows_present():
    bench = _bench()
    rows = [{"row": "conll:full", "score": 0.91, "artifact_mb": 86.0},
            {"row": "conll:sft:fisher:0.01", "score": 0.90, "artifact_mb": 1.29},
            {"row": "conll:sft:magnitude:0.01", "score": 0.905, "artifact_mb": 1.29},
            {"row": "conll:lora:0.01", "score": 0.895, "artifact_mb": 0.5},
            {"row": "conll:lora:r8", "error": "boom"}]
    out = bench.targets("conll", rows)
    assert out["sft fisher 1% minus full (points; target >= -1.0)"] == pytest.approx(-1.0)
    assert out["best sft 1% (magnitude) minus full (points)"] == pytest.approx(-0.5)
    assert out["sft fisher 1% minus LoRA at the 1% count (points; target >= 0)"] == pytest.approx(0.5)
    assert out["best sft 1% (magnitude) minus LoRA at the 1% count (points)"] == pytest.approx(1.0)
    assert not any("r8" in k for k in out)                       # the LoRA r8 row failed: no r8 comparison
    r8 = bench.targets("conll", rows[:-1] + [{"row": "conll:lora:r8", "score": 0.90},
                                             {"row": "conll:sft:fisher:r8", "score": 0.89},
                                             {"row": "conll:sft:random:r8", "score": 0.905}])
    assert r8["sft fisher at LoRA-r8's count minus LoRA r8 (points; target >= 0)"] == pytest.approx(-1.0)
    assert r8["best sft at LoRA-r8's count (random) minus LoRA r8 (points)"] == pytest.approx(0.5)
    r3 = bench.targets("conll", rows + [{"row": "conll:sft:fisher:r3", "score": 0.897}])
    assert r3["sft fisher at LoRA-1%'s exact count (r3) minus LoRA at the 1% count (points)"] == pytest.approx(0.2)
    assert not any("lottery" in k for k in r3)
    pct = {r["row"]: r.get("artifact_pct_of_dense") for r in bench.with_pct_of_dense(rows)}
    assert pct["conll:full"] == pytest.approx(100) and pct["conll:sft:fisher:0.01"] == pytest.approx(1.5)
    assert pct["conll:lora:r8"] is None


def test_a_side_record_gets_its_own_folders():
    """--record-name: the rows re-run beside new ones never overwrite the main record's artifacts."""
    bench = _bench()
    main = bench.command_for("conll:lora:0.01", smoke=False)
    side = bench.command_for("conll:lora:0.01", smoke=False, group="equal_count")
    assert main[main.index("-o") + 1] == "benchmarks/runs/headline/conll_lora_0.01"
    assert side[side.index("-o") + 1] == "benchmarks/runs/headline/equal_count/conll_lora_0.01"
    assert bench.run_dir("conll:lora:0.01", smoke=True, group="equal_count") != bench.run_dir("conll:lora:0.01", False, "equal_count")


def test_reuse_takes_only_a_record_of_the_same_name(tmp_path, monkeypatch, capsys):
    """--reuse with --record-name completes that side record; the main record (or another side
    record) is refused before any row runs."""
    bench = _bench()
    assert bench.record_name("conll", "head_warmup") == "headline_conll_head_warmup"
    old = tmp_path / "rec.json"
    old.write_text(json.dumps({"experiment": "headline_conll", "rows": []}))
    monkeypatch.setattr(bench, "run_row", lambda *a, **k: pytest.fail("a row ran"))
    monkeypatch.setattr(sys, "argv", ["bench_headline.py", "--only", "conll:full", "--record-name", "head_warmup",
                                      "--reuse", str(old)])
    assert bench.main() == 2
    assert "not headline_conll_head_warmup" in capsys.readouterr().err


def test_another_seed_is_a_flag_on_every_row_and_needs_its_own_record(monkeypatch):
    bench = _bench()
    cmd = bench.command_for("banking:sft:fisher:0.01", smoke=False, group="seed1", seed=1)
    assert cmd[cmd.index("--seed") + 1] == "1" and "--seed" not in bench.command_for("banking:full", False)
    monkeypatch.setattr(sys, "argv", ["bench_headline.py", "--only", "banking:full", "--seed", "1"])
    with pytest.raises(SystemExit):
        bench.main()

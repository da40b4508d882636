"""`sparseft demo --quick` end to end (on the tiny model; `make demo` runs the real MiniLM), and the
demo's helpers: overrides per step, reruns into its own folder, refusing foreign folders."""

import json

import pytest

from sparseft.cli.main import main
from sparseft.demo.story import STEPS, _clear_step_dir, split_overrides, step_overrides

PNG = b"\x89PNG\r\n\x1a\n"


def test_quick_demo_end_to_end(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--model", str(tiny_bert_dir), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    # one comparison table: the five evaluated models, F1 and the cost columns
    for label in ("full FT", "sparse FT 1% (fisher)", "LoRA r1", "pruned 50% FFN + KD", "int8, exported"):
        assert label in text, label
    assert "throughput b32 seq/s" in text and "peak MB" in text
    for step in STEPS:
        assert (out / step / "metrics.json").exists(), step
    assert (out / "sparse" / "diff" / "manifest.json").exists() and (out / "lora" / "finetune" / "adapter").is_dir()
    assert (out / "compressed" / "compressed" / "compression_config.json").exists()
    md = (out / "report.md").read_text()
    assert "| model | f1 |" in md and "lr 0.003" in md and "![Accuracy vs size on disk](pareto_size.png)" in md
    assert (out / "report.html").exists()
    for name in ("pareto_size", "pareto_speed", "curves", "size_breakdown", "per_layer"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG, name
    for name in ("pareto_size", "pareto_speed"):
        pts = json.loads((out / f"{name}.json").read_text())["points"]
        assert {p["kind"] for p in pts} == {"full", "sparse", "lora", "compressed"}
        assert len(pts) == 5 and any(p["on_front"] for p in pts)
    rows = {r["label"]: r for r in json.loads((out / "comparison.json").read_text())["points"]}
    assert rows["sparse FT 1% (fisher)"]["artifact"] == "sparse diff"
    assert rows["LoRA r1"]["artifact"] == "LoRA adapter"
    assert rows["... + int8, exported"]["artifact"] == "compressed checkpoint"
    assert rows["sparse FT 1% (fisher)"]["trainable_params"] < rows["full FT"]["trainable_params"]
    sizes = json.loads((out / "size_breakdown.json").read_text())["series"]
    assert set(sizes) == {"full FT", "sparse FT 1% (fisher)", "LoRA r1", "... + int8, exported"}
    assert set(json.loads((out / "curves.json").read_text())["series"]) == {
        "full FT: finetune", "sparse FT 1% (fisher): finetune", "LoRA r1: finetune", "compressed: shrink"}


def test_overrides_go_to_one_step_or_all():
    split = split_overrides(["seed=1", "sparse.stages.finetune.lr=5e-3"])
    assert split["sparse"] == ["seed=1", "stages.finetune.lr=5e-3"] and split["full"] == ["seed=1"]
    with pytest.raises(ValueError, match="key=value"):
        split_overrides(["sparse.lr"])


def test_compress_step_reads_the_sparse_model(tmp_path):
    over = step_overrides("compressed", tmp_path, "minilm", False, [])
    assert f"model={tmp_path / 'sparse' / 'model'}" in over
    assert f"output_dir={tmp_path / 'compressed'}" in over


def test_step_folders_rerun_only_when_sparseft_made_them(tmp_path):
    from sparseft.utils.outdir import OutputDirError, write_marker

    ours = tmp_path / "full"
    ours.mkdir()
    write_marker(ours, "run:train+eval+save")
    (ours / "finetune").mkdir()
    (ours / "finetune" / "log.jsonl").write_text("{}\n")       # would be appended to by a rerun
    _clear_step_dir(ours, overwrite=False)
    assert not ours.exists()
    foreign = tmp_path / "sparse"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not written by sparseft"):
        _clear_step_dir(foreign, overwrite=False)
    assert (foreign / "notes.txt").exists()

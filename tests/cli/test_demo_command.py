"""`sparseft demo` end to end on the tiny model (the real MiniLM run is `make demo`)."""

import json

from sparseft.cli.main import main


def test_demo_writes_data_trains_and_reports(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--model", str(tiny_bert_dir), "--output-dir", str(out),
               "stages.finetune.epochs=1", "stages.finetune.progress=false", "stages.dev.cost=false"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "[dev]" in text and "per_type.LOC.f1" in text and "model saved to" in text
    assert (out / "data" / "train.conll").exists() and (out / "model" / "config.json").exists()
    stages = json.loads((out / "metrics.json").read_text())["stages"]
    assert stages["load"]["train_examples"] == 800 and stages["load"]["eval_examples"] == 200
    assert stages["finetune"]["steps"] == 50

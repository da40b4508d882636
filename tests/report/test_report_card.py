import json

from sparseft.report.card import Report


def test_report_writes_markdown_and_json(tmp_path):
    r = Report(title="t", env={"commit": "abc", "dirty": True, "cpu": "cpu", "versions": {"torch": "x"}})
    r.log("dev", {"f1": 0.5, "per_type": {"PER": {"f1": 0.75}}, "history": [1, 2]})
    r.log("dev", {"params": 1234567})
    r.write(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "commit: abc (dirty)" in md and "| per_type.PER.f1 | 0.7500 |" in md and "1,234,567" in md
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["stages"]["dev"]["f1"] == 0.5 and data["stages"]["dev"]["history"] == [1, 2]
    text = r.render_text()
    assert "[dev]" in text and "per_type.PER.f1" in text


def test_default_environment_has_versions():
    env = Report().env
    assert env["versions"]["torch"] and "cpu" in env and "date" in env

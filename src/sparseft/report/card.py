"""Report card: every run says what it did, on what, and how well.

`Report.log(stage, metrics)` collects a section per stage; `write(dir)` produces `metrics.json`
(machine-readable) and `report.md` (git commit + dirty flag, hardware, package versions, then a
table per stage). `render_text()` is what the CLI prints at the end of a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparseft.utils.env import describe_environment
from sparseft.utils.io import atomic_write_json, atomic_write_text


@dataclass
class Report:
    title: str = "sparseft run"
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=describe_environment)

    def log(self, stage: str, metrics: dict[str, Any]) -> None:
        self.sections.setdefault(stage, {}).update(metrics)

    def to_dict(self) -> dict:
        return {"title": self.title, "env": self.env, "stages": self.sections}

    def write(self, directory: str | Path) -> Path:
        directory = Path(directory)
        atomic_write_json(directory / "metrics.json", self.to_dict())
        atomic_write_text(directory / "report.md", self.render_markdown())
        return directory / "report.md"

    def render_markdown(self) -> str:
        e = self.env
        lines = [f"# {self.title}", "",
                 f"- date: {e.get('date')}",
                 f"- commit: {e.get('commit')}{' (dirty)' if e.get('dirty') else ''}",
                 f"- machine: {e.get('cpu')} ({e.get('cpu_count')} cpus, {e.get('torch_threads')} torch threads)"
                 + (f", GPU {e['cuda']}" if e.get("cuda") else ""),
                 *([f"- CPU units: {e['hardware']['summary']}"] if (e.get("hardware") or {}).get("summary") else []),
                 "- versions: " + ", ".join(f"{k} {v}" for k, v in (e.get("versions") or {}).items() if v),
                 ""]
        for stage, metrics in self.sections.items():
            lines += [f"## {stage}", "", "| metric | value |", "|---|---|"]
            for key, value in _flatten(metrics):
                lines.append(f"| {key} | {_fmt(value)} |")
            lines.append("")
        return "\n".join(lines)

    def render_text(self) -> str:
        width = 34
        lines = ["=" * 60, f" {self.title}", "=" * 60]
        for stage, metrics in self.sections.items():
            lines.append(f"[{stage}]")
            for key, value in _flatten(metrics):
                lines.append(f"  {key:<{width}} {_fmt(value)}")
        e = self.env
        lines.append(f"(commit {str(e.get('commit'))[:10]}{'+dirty' if e.get('dirty') else ''}, "
                     f"{e.get('cpu')}, torch {(e.get('versions') or {}).get('torch')})")
        return "\n".join(lines)


def _flatten(d: dict, prefix: str = ""):
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        elif isinstance(value, list):
            continue  # histories go to metrics.json only
        else:
            yield name, value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)

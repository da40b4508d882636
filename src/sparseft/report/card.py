"""Report card: every run says what it did, on what, and how well.

`Report.log(stage, metrics)` collects a section per stage; `write(dir)` produces `metrics.json`
(machine-readable) and `report.md` (git commit + dirty flag, hardware, package versions, the
plots, then a table per stage). `render_text()` is what the CLI prints at the end of a run.

Plots (`report/figures.py`: training curves, Pareto fronts, per-layer values, size breakdown)
are PNG files next to report.md, each with its data as JSON beside it, and `report.html` is
the same report in one self-contained file. `Report(figures=False)` writes neither.
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
    figures: bool = True  # draw the plots and report.html in write()

    def log(self, stage: str, metrics: dict[str, Any]) -> None:
        self.sections.setdefault(stage, {}).update(metrics)

    def to_dict(self) -> dict:
        # metrics.json is written with sorted keys: stage_order keeps the order the stages ran in
        return {"title": self.title, "env": self.env, "stages": self.sections, "stage_order": list(self.sections)}

    def write(self, directory: str | Path) -> Path:
        directory = Path(directory)
        atomic_write_json(directory / "metrics.json", self.to_dict())
        figures, note = (self._figures(directory) if self.figures else ([], None))
        markdown = self.render_markdown(figures, note)
        atomic_write_text(directory / "report.md", markdown)
        if figures:
            from sparseft.report.html import write_html

            write_html(markdown, directory / "report.html", self.title)
        return directory / "report.md"

    def _figures(self, directory: Path) -> tuple[list[tuple[str, str]], str | None]:
        """Draw this run's plots; a plotting failure is reported (warning + report line), the
        metrics are already written."""
        import warnings

        from sparseft.report.figures import figures_for
        from sparseft.report.runs import RunResult

        run = RunResult(directory.name, directory, self.sections, self.env)
        try:
            return figures_for([run], directory), None
        except (OSError, ValueError, ImportError, RuntimeError, KeyError, TypeError) as exc:
            warnings.warn(f"report plots in {directory} failed: {exc}", stacklevel=2)
            return [], f"plots failed: {type(exc).__name__}: {exc}"

    def render_markdown(self, figures: list[tuple[str, str]] = (), note: str | None = None) -> str:
        e = self.env
        lines = [f"# {self.title}", "",
                 f"- date: {e.get('date')}",
                 f"- commit: {e.get('commit')}{' (dirty)' if e.get('dirty') else ''}",
                 f"- machine: {e.get('cpu')} ({e.get('cpu_count')} cpus, {e.get('torch_threads')} torch threads)"
                 + (f", GPU {e['cuda']}" if e.get("cuda") else ""),
                 *([f"- CPU units: {e['hardware']['summary']}"] if (e.get("hardware") or {}).get("summary") else []),
                 "- versions: " + ", ".join(f"{k} {v}" for k, v in (e.get("versions") or {}).items() if v),
                 ""]
        for title, png in figures:
            lines += [f"### {title}", "", f"![{title}]({png})", ""]
        if note:
            lines += [f"- {note}", ""]
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

"""Compare runs: one table and the Pareto plots across any runs' metrics.json.

    sparseft compare runs/full runs/sparse runs/lora -o runs/compare
    sparseft compare benchmarks/results/conll2003_full-*.json runs/demo/sparse

`compare(paths, out_dir)` reads each run folder (or metrics.json / benchmark record file, see
`report.runs`), turns every evaluated model into a row (headline metric, trainable parameters,
artifact size, CPU latency at batch 1, throughput at batch 32, train time, peak memory), and
writes into `out_dir`: `report.md` (the table and the plots), `report.html`, `comparison.json`
(the rows) and the figures of `report.figures` with their data. Missing values print as "-".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from sparseft.report.figures import figures_for
from sparseft.report.runs import Point, RunResult, load_run, run_points
from sparseft.utils.io import atomic_write_json, atomic_write_text

# (header, Point field, format)
COLUMNS = (
    ("model", "label", "{}"),
    ("{metric}", "metric", "{:.4f}"),
    ("trainable params", "trainable_params", "{:,}"),
    ("artifact", "artifact", "{}"),
    ("artifact MB", "artifact_mb", "{:.2f}"),
    ("latency b1 ms", "latency_ms_b1", "{:.1f}"),
    ("throughput b32 seq/s", "throughput_b32", "{:.1f}"),
    ("train s", "train_seconds", "{:.1f}"),
    ("peak MB", "peak_memory_mb", "{:,.0f}"),
)


@dataclass
class Comparison:
    points: list[Point]
    figures: list[tuple[str, str]] = field(default_factory=list)
    out_dir: Path | None = None

    def rows(self) -> list[list[str]]:
        return [[_cell(getattr(p, attr), fmt) for _, attr, fmt in COLUMNS] for p in self.points]

    def headers(self) -> list[str]:
        metrics = sorted({p.metric_name for p in self.points}) or ["metric"]
        return [h.format(metric="/".join(metrics)) for h, _, _ in COLUMNS]

    def markdown_table(self) -> str:
        head = self.headers()
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows()]
        return "\n".join(lines)

    def text_table(self) -> str:
        head, rows = self.headers(), self.rows()
        widths = [max(len(x) for x in col) for col in zip(head, *rows)]
        fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *[fmt(r) for r in rows]])


def _cell(value, fmt: str) -> str:
    if value is None or value == "":
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def collect(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> tuple[list[RunResult], list[Point]]:
    """Load the runs and their points; a run without any evaluated model is an error."""
    runs, points = [], []
    for i, path in enumerate(paths):
        run = load_run(path, names[i] if names else None)
        pts = run_points(run)
        if not pts:
            raise ValueError(f"{path}: no evaluated model in it (no eval stage with f1 / accuracy / "
                             f"perplexity / response_loss)")
        runs.append(run)
        points += pts
    labels = [p.label for p in points]
    dupes = {lbl for lbl in labels if labels.count(lbl) > 1}
    for p in points:  # two runs with the same folder name: tell them apart by their path
        if p.label in dupes:
            run = next(r for r in runs if r.name == p.run)
            p.label = f"{run.path}/{p.stage}" if p.label != p.run else str(run.path)
    return runs, points


def render_markdown(comp: Comparison, title: str, intro: Sequence[str] = ()) -> str:
    lines = [f"# {title}", "", *intro, "" if intro else "", comp.markdown_table(), "",
             "- artifact: what the model ships as (sparse diff and LoRA adapter need the base model; "
             "a model folder or compressed checkpoint runs on its own).",
             "- latency / throughput: CPU, random 64-token inputs, median of repeats "
             "(`sparseft.eval.cost`); peak MB: the training process's peak RSS (GPU: allocator peak).",
             ""]
    for title_, png in comp.figures:
        lines += [f"## {title_}", "", f"![{title_}]({png})", ""]
    return "\n".join(lines)


def compare(paths: Sequence[str | Path], out_dir: str | Path | None = None, *, names: Sequence[str] | None = None,
            labels: dict[str, str] | None = None, title: str = "sparseft comparison",
            intro: Sequence[str] = (), html: bool = True) -> Comparison:
    """Compare runs; with `out_dir`, write report.md, report.html, comparison.json and the plots.

    Args:
        paths: run folders, metrics.json files or benchmark record files.
        names: one name per path (default: folder name or record's experiment).
        labels: point label -> display label in the table and plots.
        intro: Markdown lines put between the title and the table.

    Example:
        >>> comp = compare(["runs/full", "runs/sparse"], "runs/compare")  # doctest: +SKIP
        >>> print(comp.text_table())                                      # doctest: +SKIP
    """
    runs, points = collect(paths, names)
    for p in points:
        p.label = (labels or {}).get(p.label, p.label)
    comp = Comparison(points)
    if out_dir is None:
        return comp
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    comp.out_dir = out
    comp.figures = figures_for(runs, out, labels=labels, points=points)
    atomic_write_json(out / "comparison.json", {"title": title, "runs": [str(r.path) for r in runs],
                                                "points": [p.to_dict() for p in points]})
    markdown = render_markdown(comp, title, intro)
    atomic_write_text(out / "report.md", markdown)
    if html:
        from sparseft.report.html import write_html

        write_html(markdown, out / "report.html", title)
    return comp

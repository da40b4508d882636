"""The plots of one run's report (`Report.write`) and of a comparison (`sparseft compare`).

`figures_for(runs, out_dir)` draws every figure the runs have data for:

  curves.png          training loss and eval metric per training stage (from <stage>/log.jsonl)
  pareto_size.png     headline metric vs artifact size on disk, Pareto front marked
  pareto_speed.png    headline metric vs CPU throughput at batch 32, Pareto front marked
  per_layer.png       per-layer series: pruning sparsity, trained share of sparse FT, rank, ...
  size_breakdown.png  stored MB per part (embeddings / attention / FFN / heads / other)

and returns [(title, file name)] for report.md. A figure whose data did not change since the
last call (same `<stem>.json` on disk, PNG present) is not drawn again: `Report.write` runs
after every stage, and most stages change only one figure, if any.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from sparseft.report import plots
from sparseft.report.runs import Point, RunResult, per_layer_series, point_breakdowns, run_curves, run_points

TITLES = {
    "curves": "Training curves",
    "pareto_size": "Accuracy vs size on disk",
    "pareto_speed": "Accuracy vs CPU throughput",
    "per_layer": "Per-layer values",
    "size_breakdown": "Size breakdown",
}


def _unchanged(stem: Path, data: dict, key: str) -> bool:
    """Whether <stem>.json already holds `data` under `key` and the PNG exists."""
    try:
        old = json.loads(stem.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return False
    new = json.loads(json.dumps(data, default=str))
    return (old.get(key) == new and old.get("style_version") == plots.STYLE_VERSION
            and stem.with_suffix(".png").exists())


def _draw(out: Path, name: str, data, key: str, draw: Callable[[], Path | None]) -> str | None:
    stem = out / name
    if _unchanged(stem, data, key):
        return stem.with_suffix(".png").name
    png = draw()
    return png.name if png else None


def figures_for(runs: Sequence[RunResult], out_dir: str | Path, *, labels: dict[str, str] | None = None,
                prefix_runs: bool | None = None, points: list[Point] | None = None) -> list[tuple[str, str]]:
    """Draw the figures for `runs` into `out_dir`; returns [(title, PNG file name)].

    Args:
        labels: point label or run name -> display label (the demo's "sparse FT 1%" for "sparse").
        prefix_runs: prefix curve / per-layer labels with the run name (default: with > 1 run).
        points: the runs' points, already labelled (default: `run_points` of each run + `labels`).
    """
    out = Path(out_dir)
    labels = labels or {}
    prefix = len(runs) > 1 if prefix_runs is None else prefix_runs
    given = points is not None
    points, curves, layers = list(points or []), {}, {}
    for run in runs:
        if not given:
            pts = run_points(run)
            for p in pts:
                p.label = labels.get(p.label, p.label)
            points += pts
        tag = f"{labels.get(run.name, run.name)}: " if prefix else ""
        curves.update(run_curves(run, tag))
        layers.update(per_layer_series(run, tag))
    pdicts = [p.to_dict() for p in points]
    made = []
    jobs = [
        ("curves", curves, "series", lambda: plots.plot_curves(curves, out / "curves")),
        ("pareto_size", pdicts, "points", lambda: plots.plot_pareto(pdicts, "artifact_mb", out / "pareto_size")),
        ("pareto_speed", pdicts, "points", lambda: plots.plot_pareto(pdicts, "throughput_b32", out / "pareto_speed")),
        ("per_layer", layers, "series", lambda: plots.plot_per_layer(layers, out / "per_layer")),
    ]
    for name, data, key, draw in jobs:
        if name.startswith("pareto"):
            x = "artifact_mb" if name == "pareto_size" else "throughput_b32"
            if sum(1 for p in pdicts if p.get(x) is not None) < 2:
                continue
            data = plots.pareto_points(pdicts, x)[0]
        elif not data:
            continue
        png = _draw(out, name, data, key, draw)
        if png:
            made.append((TITLES[name], png))
    breakdowns = point_breakdowns(points)
    if breakdowns:
        png = _draw(out, "size_breakdown", breakdowns, "series",
                    lambda: plots.plot_size_breakdown(breakdowns, out / "size_breakdown"))
        if png:
            made.append((TITLES["size_breakdown"], png))
    return made

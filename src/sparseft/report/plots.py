"""Report plots: PNG files next to report.md, each with the plotted data as JSON beside it.

    plot_pareto(points, "artifact_mb", out / "pareto_size")   # -> pareto_size.png + pareto_size.json
    plot_curves(curves, out / "curves")
    plot_per_layer(series, out / "per_layer")
    plot_size_breakdown(breakdowns, out / "size_breakdown")

Each function takes plain data (from `sparseft.report.runs`), writes `<stem>.png` and
`<stem>.json` (what was plotted: tests and scripts read the data, not the pixels) atomically, and
returns the PNG path, or None when there is nothing worth a plot (e.g. fewer than two points).

matplotlib is imported lazily, only when a plot is drawn, and without pyplot: figures are
`matplotlib.figure.Figure` objects rendered by the Agg canvas, so no global backend is set and
nothing needs a display.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

from sparseft.utils.io import atomic_write_bytes, atomic_write_text

KIND_COLORS = {"full": "#1f77b4", "sparse": "#2ca02c", "lora": "#ff7f0e", "compressed": "#d62728", "base": "#7f7f7f"}
CATEGORY_COLORS = {"embeddings": "#9467bd", "attention": "#1f77b4", "ffn": "#2ca02c", "heads": "#ff7f0e",
                   "other": "#7f7f7f"}
STYLE_VERSION = 1  # bump when the drawing changes, so cached figures (report.figures) are redrawn
AXES = {  # point field -> (axis label, higher is better, log scale)
    "artifact_mb": ("artifact size on disk (MB, log scale)", False, True),
    "throughput_b32": ("CPU throughput, batch 32 (sequences/s)", True, False),
    "latency_ms_b1": ("CPU latency, batch 1 (ms)", False, False),
    "trainable_params": ("trainable parameters (log scale)", False, True),
}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, stem: Path, data: dict) -> Path:
    """Write <stem>.png and <stem>.json atomically; returns the PNG path."""
    stem = Path(stem)
    data = {**data, "style_version": STYLE_VERSION}
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    png = stem.with_suffix(".png")
    atomic_write_bytes(png, buf.getvalue())
    atomic_write_text(stem.with_suffix(".json"), json.dumps(data, indent=1, default=str) + "\n")
    return png


def _color(kind: str) -> str:
    return KIND_COLORS.get(kind, "#8c564b")


def pareto_front(points: Sequence[dict], x: str, y: str, *, x_higher: bool, y_higher: bool) -> list[int]:
    """Indices of the points no other point beats on both `x` and `y` (None values are skipped).

    A point is dominated when another is at least as good on both axes and better on one.

    Example:
        >>> pareto_front([{"s": 1, "f": 0.8}, {"s": 2, "f": 0.7}, {"s": 3, "f": 0.9}], "s", "f",
        ...              x_higher=False, y_higher=True)
        [0, 2]
    """
    def better_eq(a, b, higher):
        return a >= b if higher else a <= b

    valid = [i for i, p in enumerate(points) if p.get(x) is not None and p.get(y) is not None]
    front = []
    for i in valid:
        pi = points[i]
        dominated = False
        for j in valid:
            pj = points[j]
            if j == i:
                continue
            if (better_eq(pj[x], pi[x], x_higher) and better_eq(pj[y], pi[y], y_higher)
                    and (pj[x] != pi[x] or pj[y] != pi[y])):
                dominated = True
                break
        if not dominated:
            front.append(i)
    return front


def pareto_points(points: Sequence[dict], x: str) -> tuple[list[dict], str, bool]:
    """([{label, kind, x, y, on_front}], metric name, higher is better) for plot_pareto.

    Points without `x` are dropped; the y axis is the first point's headline metric (points
    scored with another metric are dropped too).
    """
    _, x_higher, _ = AXES[x]
    pts = [p for p in points if p.get(x) is not None and p.get("metric") is not None]
    if not pts:
        return [], "", True
    metric, y_higher = pts[0]["metric_name"], pts[0].get("higher_is_better", True)
    xy = [{"label": p["label"], "kind": p.get("kind"), "x": float(p[x]), "y": float(p["metric"])}
          for p in pts if p["metric_name"] == metric]
    front = pareto_front(xy, "x", "y", x_higher=x_higher, y_higher=y_higher)
    for i, p in enumerate(xy):
        p["on_front"] = i in front
    return xy, metric, y_higher


def plot_pareto(points: Sequence[dict], x: str, stem: str | Path, *, title: str = "") -> Path | None:
    """Headline metric against `x` (a key of AXES), Pareto front marked; None below 2 points."""
    xlabel, x_higher, xlog = AXES[x]
    xy, metric, y_higher = pareto_points(points, x)
    if len(xy) < 2:
        return None
    front = [i for i, p in enumerate(xy) if p["on_front"]]
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    ordered = sorted(xy, key=lambda q: (q["x"], q["y"]))
    for i, p in enumerate(ordered):
        ax.scatter(p["x"], p["y"], s=70, color=_color(p["kind"] or ""), edgecolor="black" if p["on_front"] else "none",
                   linewidth=1.2, zorder=3)
        # labels of the right half point left; alternate above / below so neighbours overlap less
        right = i >= (len(ordered) - 1) / 2
        ann = ax.annotate(p["label"], (p["x"], p["y"]), textcoords="offset points", fontsize=8,
                          xytext=(-6 if right else 6, 5 if i % 2 == 0 else -12), ha="right" if right else "left")
        ann.set_in_layout(False)
    ax.margins(x=0.12, y=0.12)
    fx = sorted((xy[i] for i in front), key=lambda p: p["x"])
    if len(fx) > 1:
        # the boundary of the dominated region: with both axes "higher is better" the front falls
        # as x grows, so each segment takes the level of its right end ("pre"); otherwise "post"
        ax.step([p["x"] for p in fx], [p["y"] for p in fx], where="pre" if x_higher == y_higher else "post",
                color="black", linestyle="--", linewidth=1, zorder=2, label="Pareto front")
        ax.legend(loc="best", fontsize=8)
    if xlog:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel + ("" if x_higher else ", lower is better"))
    ax.set_ylabel(f"{metric} ({'higher' if y_higher else 'lower'} is better)")
    ax.set_title(title or f"{metric} vs {xlabel.split(' (')[0]}")
    ax.grid(True, alpha=0.3)
    data = {"plot": "pareto", "x": x, "x_label": xlabel, "x_higher_is_better": x_higher, "y": metric,
            "y_higher_is_better": y_higher, "points": xy, "front": [xy[i]["label"] for i in front]}
    return _save(fig, Path(stem), data)


def plot_curves(curves: dict[str, dict], stem: str | Path, *, title: str = "") -> Path | None:
    """Training loss and eval metric against the step, one line per training stage/run."""
    curves = {k: v for k, v in curves.items() if v.get("train") or v.get("eval")}
    if not curves:
        return None
    has_eval = any(v.get("eval") for v in curves.values())
    fig = _figure(10 if has_eval else 6, 4)
    axes = fig.subplots(1, 2 if has_eval else 1, squeeze=False)[0]
    for label, c in curves.items():
        if c.get("train"):
            axes[0].plot([s for s, _ in c["train"]], [v for _, v in c["train"]], label=label, linewidth=1.2,
                         marker="o" if len(c["train"]) < 8 else None)
        if has_eval and c.get("eval"):
            axes[1].plot([s for s, _ in c["eval"]], [v for _, v in c["eval"]], marker="o", label=label)
    axes[0].set_xlabel("optimizer step")
    axes[0].set_ylabel("training loss")
    axes[0].set_yscale("log")
    axes[0].set_title("training loss")
    if has_eval:
        metrics = sorted({c.get("metric") for c in curves.values() if c.get("metric")})
        axes[1].set_xlabel("optimizer step")
        axes[1].set_ylabel(" / ".join(metrics) or "eval metric")
        axes[1].set_title("evaluation during training")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, Path(stem), {"plot": "curves", "series": curves})


def _short(name: str) -> str:
    """'bert.encoder.layer.3.attention.self.query.weight' -> '3.attention.self.query'."""
    parts = [p for p in name.split(".") if p not in ("weight", "bias")]
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[i:])
    return ".".join(parts[-2:])


def plot_per_layer(series: dict[str, dict], stem: str | Path, *, title: str = "") -> Path | None:
    """One bar chart per series of per-layer values (sparsity, trained share, rank, ...)."""
    series = {k: v for k, v in series.items() if v.get("values")}
    if not series:
        return None
    n = len(series)
    width = max(6.0, min(16.0, 0.18 * max(len(v["values"]) for v in series.values()) + 2))
    fig = _figure(width, 2.8 * n + 0.6)
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for ax, (label, s) in zip(axes, series.items()):
        names = [_short(name) for name, _ in s["values"]]
        ax.bar(range(len(names)), [v for _, v in s["values"]], color="#2ca02c")
        step = max(1, len(names) // 40)
        ax.set_xticks(range(0, len(names), step))
        ax.set_xticklabels(names[::step], rotation=90, fontsize=6)
        ax.set_ylabel(s.get("what", "value"))
        ax.set_title(label, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title or "per-layer values")
    return _save(fig, Path(stem), {"plot": "per_layer", "series": series})


def plot_size_breakdown(breakdowns: dict[str, dict[str, int]], stem: str | Path, *, title: str = "") -> Path | None:
    """Horizontal stacked bars: MB per category (embeddings / attention / ffn / heads / other)."""
    breakdowns = {k: v for k, v in breakdowns.items() if sum(v.values()) > 0}
    if not breakdowns:
        return None
    labels = list(breakdowns)
    categories = [c for c in CATEGORY_COLORS if any(b.get(c) for b in breakdowns.values())]
    fig = _figure(11, 0.55 * len(labels) + 1.9)
    ax, share = fig.subplots(1, 2, width_ratios=[3, 2], sharey=True)
    left = [0.0] * len(labels)
    start = [0.0] * len(labels)
    totals = [sum(breakdowns[lbl].values()) for lbl in labels]
    for cat in categories:
        mb = [breakdowns[lbl].get(cat, 0) / 2**20 for lbl in labels]
        pct = [100 * breakdowns[lbl].get(cat, 0) / t for lbl, t in zip(labels, totals)]
        ax.barh(labels, mb, left=left, color=CATEGORY_COLORS[cat], label=cat)
        share.barh(labels, pct, left=start, color=CATEGORY_COLORS[cat])
        left = [a + b for a, b in zip(left, mb)]
        start = [a + b for a, b in zip(start, pct)]
    for i, total in enumerate(left):
        ax.annotate(f"{total:.2f} MB" if total < 10 else f"{total:.1f} MB", (total, i), textcoords="offset points",
                    xytext=(4, -3), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("stored size (MB)")
    ax.set_xlim(0, max(left) * 1.2)
    share.set_xlabel("share of the artifact (%)")
    share.set_xlim(0, 100)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=len(categories), fontsize=8)
    fig.suptitle(title or "what each artifact stores")
    for a in (ax, share):
        a.grid(True, axis="x", alpha=0.3)
    data: dict[str, Any] = {"plot": "size_breakdown", "unit": "bytes", "categories": list(CATEGORY_COLORS),
                            "series": breakdowns}
    return _save(fig, Path(stem), data)

"""Report plots: valid PNGs with their data beside them; the Pareto front; the HTML report."""

import json

import pytest

from sparseft.report import plots
from sparseft.report.html import markdown_to_html
from sparseft.report.runs import categorize

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _points():
    mk = lambda label, kind, f1, mb, thr: {"label": label, "kind": kind, "metric_name": "f1",  # noqa: E731
                                           "metric": f1, "higher_is_better": True, "artifact_mb": mb,
                                           "throughput_b32": thr}
    return [mk("full", "full", 0.90, 87.0, 100.0), mk("sparse", "sparse", 0.88, 1.2, 100.0),
            mk("lora", "lora", 0.85, 0.5, 95.0), mk("int8", "compressed", 0.87, 50.0, 300.0),
            mk("bad", "compressed", 0.80, 60.0, 90.0)]


def test_pareto_front_minimise_x_maximise_y():
    pts = [{"x": 1, "y": 0.8}, {"x": 2, "y": 0.7}, {"x": 3, "y": 0.9}, {"x": 3, "y": 0.9}, {"x": None, "y": 1.0}]
    assert plots.pareto_front(pts, "x", "y", x_higher=False, y_higher=True) == [0, 2, 3]
    assert plots.pareto_front(pts, "x", "y", x_higher=True, y_higher=True) == [2, 3]
    assert plots.pareto_front(pts, "x", "y", x_higher=False, y_higher=False) == [0, 1]


def test_pareto_plots_are_pngs_with_their_data(tmp_path):
    png = plots.plot_pareto(_points(), "artifact_mb", tmp_path / "pareto_size")
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    data = json.loads((tmp_path / "pareto_size.json").read_text())
    assert {p["label"] for p in data["points"]} == {"full", "sparse", "lora", "int8", "bad"}
    assert data["front"] == ["full", "sparse", "lora"]   # int8: sparse is smaller and better
    speed = plots.plot_pareto(_points(), "throughput_b32", tmp_path / "pareto_speed")
    assert speed.read_bytes()[:8] == PNG_SIGNATURE
    front = json.loads((tmp_path / "pareto_speed.json").read_text())["front"]
    assert set(front) == {"full", "int8"}
    assert plots.plot_pareto(_points()[:1], "artifact_mb", tmp_path / "one") is None   # one point: no plot
    assert not (tmp_path / "one.png").exists()


def test_curves_per_layer_and_breakdown(tmp_path):
    curves = {"full": {"train": [[10, 1.2], [20, 0.6]], "eval": [[20, 0.7]], "metric": "f1"},
              "sparse": {"train": [[10, 1.5], [20, 0.9]], "eval": [], "metric": None}}
    assert plots.plot_curves(curves, tmp_path / "curves").read_bytes()[:8] == PNG_SIGNATURE
    assert set(json.loads((tmp_path / "curves.json").read_text())["series"]) == {"full", "sparse"}
    series = {"prune": {"what": "sparsity", "values": [["bert.encoder.layer.0.intermediate.dense.weight", 0.5],
                                                       ["bert.encoder.layer.1.intermediate.dense.weight", 0.7]]}}
    assert plots.plot_per_layer(series, tmp_path / "per_layer").read_bytes()[:8] == PNG_SIGNATURE
    sizes = {"full": {"embeddings": 4000, "attention": 2000, "ffn": 3000, "heads": 10, "other": 0}}
    assert plots.plot_size_breakdown(sizes, tmp_path / "size").read_bytes()[:8] == PNG_SIGNATURE
    assert json.loads((tmp_path / "size.json").read_text())["series"] == sizes
    assert plots.plot_curves({}, tmp_path / "none") is None


@pytest.mark.parametrize("name, category", [
    ("bert.embeddings.word_embeddings.weight", "embeddings"),
    ("bert.encoder.layer.0.attention.self.query.weight::values", "attention"),
    ("bert.encoder.layer.0.attention.output.dense.weight", "attention"),
    ("bert.encoder.layer.0.intermediate.dense.weight_packed", "ffn"),
    ("bert.encoder.layer.3.output.dense.bitmask", "ffn"),
    ("model.layers.2.mlp.down_proj.weight", "ffn"),
    ("model.layers.2.self_attn.q_proj.lora_A.weight", "attention"),
    ("classifier.weight", "heads"),
    ("lm_head.weight", "heads"),
    ("model.norm.weight", "other"),
])
def test_size_categories(name, category):
    assert categorize(name) == category


def test_html_is_self_contained(tmp_path):
    plots.plot_pareto(_points(), "artifact_mb", tmp_path / "p")
    md = "# T\n\n- a **b** `c`\n\n| x | y |\n|---|---|\n| 1 | <2> |\n\n![plot](p.png)\n\ntext\nmore\n"
    page = markdown_to_html(md, tmp_path)
    assert "<h1>T</h1>" in page and "<li>a <b>b</b> <code>c</code></li>" in page
    assert "<td>&lt;2&gt;</td>" in page and "<p>text more</p>" in page
    assert 'src="data:image/png;base64,iVBORw0KGgo' in page      # the PNG itself, no file link
    assert "missing image" in markdown_to_html("![x](nope.png)\n", tmp_path)

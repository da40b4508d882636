"""benchmarks/summarize.py renders every record shape, targets and data lines; parts fold into summaries."""

from __future__ import annotations

from bench_scripts import load_bench


def _summarize():
    return load_bench("summarize")


def test_chat_parts_fold_into_the_summary_with_targets():
    s = _summarize()
    env = {"commit": "abc", "cpu": "test cpu"}
    records = [
        {"experiment": "chat_full", "part": "full", "env": env, "metrics": {"eval": {"response_loss": 2.0}}},
        {"experiment": "chat_summary", "env": env, "command": "python benchmarks/bench_chat.py",
         "data_subset": "train: first 300 records", "rows": [{"part": "full", "response_loss": 2.0}],
         "targets": {"sparse_loss_vs_full (<= 1.02)": 1.01}},
        {"experiment": "prune_lm", "env": env, "data": "WikiText-2 windows", "rows": [{"run": "x", "perplexity": 31.5}]},
    ]
    kept = s.drop_summarized_parts(records)
    assert [r["experiment"] for r in kept] == ["chat_summary", "prune_lm"]
    text = s.render(kept)
    assert "## chat_full" not in text and "## chat_summary" in text
    assert "| sparse_loss_vs_full (<= 1.02) | 1.0100 |" in text
    assert "- data: train: first 300 records" in text and "- data: WikiText-2 windows" in text
    # a part without its summary is still shown
    assert [r["experiment"] for r in s.drop_summarized_parts(records[:1])] == ["chat_full"]


def test_a_stopped_benchmark_is_marked_incomplete_and_a_finished_one_is_not():
    s = _summarize()
    env = {"commit": "abc", "cpu": "test cpu"}
    part = {"experiment": "factorize_minilm", "env": env, "rows": [{"run": "minilm_svd_20", "f1": 0.9}],
            "complete": False, "runs_done": 1, "runs_planned": 12}
    assert "**incomplete**: 1 of 12 planned runs" in s.render([part])
    assert "incomplete" not in s.render([{**part, "complete": True, "runs_done": 12}])
    assert "incomplete" not in s.render([{k: v for k, v in part.items() if k != "complete"}])


def test_named_tables_render_each_under_its_title():
    s = _summarize()
    rec = {"experiment": "prune_reference", "env": {"commit": "abc"}, "command": "python x.py",
           "tables": {"code": [{"layer": "0.q", "max_abs_diff": 1e-7}], "calibration": [{"windows": 8, "error": 0.2}]}}
    text = s.render([rec])
    assert "**code**" in text and "| layer | max_abs_diff |" in text
    assert text.index("**code**") < text.index("**calibration**") and "| 8 | 0.2000 |" in text

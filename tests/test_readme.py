"""The README's Python code runs: the quick tour and the 10-line peft + Trainer snippet.

To stay fast the code runs on the tiny random BERT of tests/conftest.py: the README's model names
("minilm", the MiniLM hub id) are replaced by that folder, so the same code path runs offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def python_block(section: str) -> str:
    """The first ```python block under the '## <section>' heading."""
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    match = re.search(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)
    assert match, f"no python block under '## {section}'"
    return match.group(1)


@pytest.fixture
def model_dir(tiny_bert_dir, tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState, GradientState

    # a fresh accelerate runtime for each snippet (Trainer and sparseft's loop both set it up)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    monkeypatch.chdir(tmp_path)
    yield str(tiny_bert_dir)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_quick_tour_runs(model_dir, tmp_path):
    code = python_block("Python quick tour")
    assert code.count('"minilm"') >= 2
    exec(compile(code.replace('"minilm"', repr(model_dir)), "README quick tour", "exec"), {})
    assert (tmp_path / "runs/tour/int8").is_dir()


def test_peft_trainer_snippet_runs_in_ten_lines(model_dir, tmp_path):
    pytest.importorskip("peft")
    code = python_block("With peft, transformers.Trainer and TRL")
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    assert HUB_ID in code
    exec(compile(code.replace(HUB_ID, model_dir), "README peft snippet", "exec"), {})
    adapter = tmp_path / "runs/peft/adapter"
    assert sorted(p.name for p in adapter.iterdir()) == ["README.md", "adapter_config.json",
                                                         "adapter_model.safetensors"]

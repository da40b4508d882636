"""Helpers shared by the chat tests (constants and plain functions; fixtures live in conftest.py).

Assistant text uses only the words in ASSISTANT_WORDS and user/system text only other words, so a
test can tell from the labelled tokens alone whether the mask covers exactly the assistant turns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# tests/conftest.py's SHARED_DATA; `from conftest import ...` would find tests/chat/conftest.py here
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

ASSISTANT_WORDS = ("paris", "london", "berlin", "city", "team", "today", "club", "york")
USER_WORDS = ("john", "mary", "smith", "visited", "works", "lives", "bank", "google")

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def format_records() -> dict[str, list[dict]]:
    """Two raw records per format (one multi-turn where the format allows it)."""
    return {
        "messages": [
            {"messages": [{"role": "system", "content": "the world cup"},
                          {"role": "user", "content": "john visited"},
                          {"role": "assistant", "content": "paris city"}]},
            {"messages": [{"role": "user", "content": "mary works"},
                          {"role": "assistant", "content": "london team"},
                          {"role": "user", "content": "smith lives"},
                          {"role": "assistant", "content": "berlin club today"}]},
        ],
        "prompt_completion": [
            {"prompt": "john lives in", "completion": "new york city"},
            {"prompt": [{"role": "user", "content": "mary visited"}],
             "completion": [{"role": "assistant", "content": "paris today"}]},
        ],
        "alpaca": [
            {"instruction": "john works at", "input": "google bank", "output": "london club"},
            {"instruction": "mary lives", "input": "", "output": "berlin"},
        ],
        "dschat": [
            {"prompt": "\n\nHuman: john visited\n\nAssistant:", "chosen": " paris team",
             "rejected": " google bank"},
            {"prompt": "\n\nHuman: mary works\n\nAssistant: london\n\nHuman: smith lives\n\nAssistant:",
             "chosen": " berlin city"},
        ],
        "human_assistant": [
            {"text": "### Human: john visited ### Assistant: paris city today"},
            {"text": "### Human: mary works ### Assistant: london ### Human: smith lives ### Assistant: york club"},
        ],
        "gsm8k": [
            {"question": "john has google bank", "answer": "paris team\n#### 72"},
            {"question": "mary visited smith", "answer": "berlin club\n#### 5"},
        ],
    }


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} not available")
    return path

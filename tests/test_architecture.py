"""Guards for the architecture rules in DEVELOPERS.md that code review tends to miss."""

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "sparseft"


def _sources():
    return sorted(SRC.rglob("*.py"))


def test_accelerate_is_imported_only_by_the_training_loop():
    pattern = re.compile(r"^\s*(from accelerate\b|import accelerate\b)", re.M)
    offenders = [str(p.relative_to(SRC)) for p in _sources()
                 if pattern.search(p.read_text()) and p.relative_to(SRC).as_posix() != "train/loop.py"]
    assert offenders == []


def test_no_trust_remote_code_by_default():
    offenders = [str(p.relative_to(SRC)) for p in _sources() if "trust_remote_code=True" in p.read_text()]
    assert offenders == []


def test_torch_load_is_always_weights_only():
    offenders = []
    for p in _sources():
        for line in p.read_text().splitlines():
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{p.relative_to(SRC)}: {line.strip()}")
    assert offenders == []


def test_every_module_has_a_docstring_and_stays_small():
    missing, large = [], []
    for p in _sources():
        text = p.read_text()
        if text.strip() and not text.lstrip().startswith(('"""', "'''", "r\"\"\"")):
            missing.append(str(p.relative_to(SRC)))
        if text.count("\n") > 600:
            large.append(f"{p.relative_to(SRC)} ({text.count(chr(10))} lines)")
    assert missing == [] and large == []

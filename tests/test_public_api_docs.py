"""Every top-level verb documents itself with an example (kept apart: some of those docstrings
live in files other engineers are still editing)."""

from __future__ import annotations

import inspect

import sparseft
from test_public_api import VERBS


def test_every_verb_has_a_docstring_example():
    from sparseft import api

    for name in VERBS:
        fn = getattr(api, name) if name in ("load", "export") else getattr(sparseft, name)
        assert "Example" in (inspect.getdoc(fn) or ""), name

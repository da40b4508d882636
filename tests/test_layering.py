"""The package's floors follow the data flow; a lower floor must not import a higher one.

    utils / config / registry  <  load  <  masks  <  train  <  sft  <  compress  <  eval  <  export  <  report
    (top: chat, cli, demo, integrations, plan, pipeline, methods, api: may import anything)

KNOWN lists today's exceptions, each with its reason; it is debt to pay down, not a licence: a new
upward import fails this test, and an entry that is no longer needed fails it too (delete it).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "sparseft"
FLOORS = {"utils": 0, "config": 0, "registry": 0, "load": 1, "masks": 2, "train": 3, "sft": 4, "compress": 5,
          "attention": 5, "experts": 5, "eval": 6, "export": 7, "report": 8}

# importer module -> upward imports it still makes (module paths cut to sparseft.<floor>.<module>).
KNOWN = {
    # recipe stages live beside their method and score the model before/after: stages belong on a
    # pipeline floor of their own (planned: sparseft/stages/), then these go away.
    "compress.factorize.stage": {"sparseft.eval.cost", "sparseft.eval.evaluate"},
    "compress.prune.stage": {"sparseft.eval.cost", "sparseft.eval.evaluate"},
    "compress.quantize.stage": {"sparseft.eval.cost", "sparseft.export.compressed"},
    "experts.stage": {"sparseft.eval.cost", "sparseft.eval.evaluate"},
    "experts.task_stage": {"sparseft.eval.evaluate", "sparseft.export.task_experts"},
    "sft.stage": {"sparseft.eval.evaluate", "sparseft.export.sparse_diff"},
    "train.lora_stage": {"sparseft.eval.evaluate"},
    "train.stage": {"sparseft.eval.evaluate"},
    # swapped layers record themselves for the transformers quantizer, which lives in export/
    "compress.factorize.artifact": {"sparseft.export.hf_quantizer"},
    "compress.factorize.layer": {"sparseft.export.hf_quantizer"},
    # the recipe's data block is DataConfig itself
    "config.recipe": {"sparseft.load.data"},
    # the artifact loader reads every format the exporters write (format readers belong in load/)
    # (and a folder saved with sparse attention switches it back on)
    "load.artifacts": {"sparseft.attention.apply", "sparseft.export.compressed", "sparseft.export.sparse_diff",
                       "sparseft.integrations",
                       "sparseft.sft.layer"},
    # data-driven masks run a few training steps (lottery) through the loop
    "masks.select": {"sparseft.train.loop"},
    # sparse fine-tuning returns a diff with a base fingerprint
    "sft.api": {"sparseft.export.fingerprint", "sparseft.export.sparse_diff"},
    # FSDP/ZeRO registers SparseDelta's frozen base as an external parameter
    "train.distributed": {"sparseft.sft.layer"},
}


def upward_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG).with_suffix("").parts
        floor = FLOORS.get(parts[0])
        if floor is None:
            continue
        name = ".".join(parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            for mod in mods:
                bits = mod.split(".")
                if bits[0] != "sparseft" or len(bits) < 2:
                    continue
                target = FLOORS.get(bits[1])
                if target is None or target > floor:
                    found.setdefault(name, set()).add(".".join(bits[:3]))
    return found


def test_no_new_upward_imports():
    found = upward_imports()
    new = {m: sorted(v - KNOWN.get(m, set())) for m, v in found.items() if v - KNOWN.get(m, set())}
    assert not new, f"lower floors import higher ones (move the code or import from a lower floor): {new}"


def test_known_exceptions_are_still_needed():
    found = upward_imports()
    stale = {m: sorted(v - found.get(m, set())) for m, v in KNOWN.items() if v - found.get(m, set())}
    assert not stale, f"layering exceptions no longer needed, delete them from KNOWN: {stale}"

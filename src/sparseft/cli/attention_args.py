"""`--attention SPEC` for `sparseft train`, `eval` and `chat-sft`: sparse attention from one string.

SPEC is comma-separated `key=value` fields of SparseAttentionConfig (lists in brackets), or a
bare window as shorthand:

    --attention window=sqrt,sinks=4          --attention sqrt         --attention 256,global_tokens=1
    --attention window=64,global_positions=[0,7],backend=dense_mask

`train` / `chat-sft` run a `sparse_attention` stage before training (so the run's recipe.yaml and
saved config.json record it); `eval` applies it to the loaded model. A folder saved with sparse
attention gets it back on load without the flag; `--attention dense` switches it off for eval.
"""

from __future__ import annotations

import argparse

HELP = ("sparse attention: SparseAttentionConfig fields key=value,... (e.g. window=sqrt,sinks=4; a bare "
        "value is the window: sqrt, 128); 'dense' = full attention")


def add_attention_arg(parser) -> None:
    parser.add_argument("--attention", default="", metavar="SPEC", help=HELP)


def _split(spec: str) -> list[str]:
    """Split on commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in spec:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in [*parts, cur] if p.strip()]


def parse_attention(spec: str) -> dict | None:
    """The fields SPEC sets (validated) as a flat dict; None for '' / 'dense' / 'none'."""
    import dataclasses

    from sparseft.attention.config import SparseAttentionConfig
    from sparseft.config.base import parse_scalar

    if spec.strip().lower() in ("", "dense", "none", "full"):
        return None
    fields = {}
    for item in _split(spec):
        key, eq, raw = item.partition("=")
        if not eq:
            key, raw = "window", item
        key = key.strip().replace("-", "_")
        valid = [f.name for f in dataclasses.fields(SparseAttentionConfig)]
        if key not in valid:
            raise ValueError(f"--attention {spec!r}: unknown field {key!r}; valid fields: {', '.join(valid)}")
        fields[key] = parse_scalar(raw.strip())
    try:
        cfg = SparseAttentionConfig(**fields)   # validates (and normalises, e.g. '12' -> 12)
        return {k: getattr(cfg, k) for k in fields}
    except ValueError as exc:
        raise ValueError(f"--attention {spec!r}: {exc}") from None


def attention_stages(args: argparse.Namespace) -> list[dict]:
    """The recipe stage `--attention` adds before training ([] without the flag)."""
    fields = parse_attention(getattr(args, "attention", "") or "")
    return [] if fields is None else [{"name": "attention", "method": "sparse_attention", **fields}]


def apply_attention_arg_(model, args: argparse.Namespace) -> None:
    """`eval`: apply `--attention` to a loaded model ('dense' undoes a pattern restored from the folder)."""
    spec = getattr(args, "attention", "") or ""
    if not spec:
        return
    fields = parse_attention(spec)
    if fields is None:
        from sparseft.attention.apply import densify_attention_

        densify_attention_(model)
        return
    from sparseft.attention.apply import sparsify_attention_
    from sparseft.attention.config import SparseAttentionConfig

    sparsify_attention_(model, SparseAttentionConfig(**fields))

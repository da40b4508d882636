"""`sparseft diff info|apply|revert|compose|merge`: work with sparse diffs (see
`sparseft.export.sparse_diff` for the format, the base check and the compose policies).

    sparseft diff info runs/sft/diff
    sparseft diff apply runs/sft/diff --model minilm -o runs/applied      # base + diff
    sparseft diff revert runs/sft/diff --model runs/applied -o runs/base  # exact W0 back
    sparseft diff compose lang/diff task/diff -o runs/both --policy sum
    sparseft diff merge lang/diff task/diff --base minilm -o runs/merged  # dense export

`-o` is `--output-dir` (`--output` is accepted too), as in every sparseft verb.

Models are loaded with the diff's task and labels (from its manifest), so a new head of the
right size exists before the diff's dense head is copied into it.
"""

from __future__ import annotations

import argparse
import json

from sparseft.cli.common import HelpFormatter, RawHelpFormatter, add_model_arg, add_output_arg, add_overwrite_arg


def add_parser(sub) -> None:
    p = sub.add_parser("diff", help="inspect, apply, revert, compose or merge sparse diffs",
                       description=__doc__, formatter_class=RawHelpFormatter)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    fmt = HelpFormatter

    v = verbs.add_parser("info", help="print a diff's manifest summary", formatter_class=fmt)
    v.add_argument("diff", help="diff folder (diff.safetensors + manifest.json)")
    v.add_argument("--json", action="store_true", help="print the whole summary as JSON")
    v.set_defaults(func=run_info)

    for name, helptext in (("apply", "add a diff to a model and save the result"),
                           ("revert", "remove a diff from a model (exact W0 at its positions) and save")):
        v = verbs.add_parser(name, help=helptext, formatter_class=fmt)
        v.add_argument("diff", help="diff folder")
        add_model_arg(v, required=True, help="model: alias, folder or hub id (the diff's base for apply)")
        add_output_arg(v, required=True, legacy_output=True, help="folder for the resulting save_pretrained model")
        if name == "apply":
            v.add_argument("--scale", type=float, default=1.0, help="multiply the sparse deltas by this factor")
        v.add_argument("--force", action="store_true", help="skip the base-model check (fingerprint)")
        _add_task_args(v)
        add_overwrite_arg(v)
        v.set_defaults(func=run_apply if name == "apply" else run_revert)

    v = verbs.add_parser("compose", help="combine several diffs into one diff folder", formatter_class=fmt)
    v.add_argument("diffs", nargs="+", help="diff folders, in order")
    add_output_arg(v, required=True, legacy_output=True, help="folder for the composed diff")
    v.add_argument("--policy", default="sum", choices=["sum", "error", "last"],
                   help="overlapping positions: add deltas, refuse, or let the later diff win")
    v.add_argument("--drop-heads", action="store_true", help="leave out dense heads (diffs of different tasks)")
    v.add_argument("--force", action="store_true", help="compose diffs of different bases")
    add_overwrite_arg(v)
    v.set_defaults(func=run_compose)

    v = verbs.add_parser("merge", help="apply one or more diffs to a base and save a dense model",
                         formatter_class=fmt)
    v.add_argument("diffs", nargs="+", help="diff folders, composed in order")
    v.add_argument("--base", "--model", "--model_name_or_path", dest="base", required=True,
                   help="base model: alias, folder or hub id")
    add_output_arg(v, required=True, legacy_output=True, help="folder for the merged save_pretrained model")
    v.add_argument("--policy", default="sum", choices=["sum", "error", "last"], help="compose policy")
    v.add_argument("--force", action="store_true", help="skip the base-model check (fingerprint)")
    _add_task_args(v)
    add_overwrite_arg(v)
    v.set_defaults(func=run_merge)


def _add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=["ner", "cls", "lm"], help="task head to load (default: the diff's)")


def run_info(args: argparse.Namespace) -> int:
    from sparseft.export.sparse_diff import diff_info

    info = diff_info(args.diff)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key in ("path", "base_model", "base_fingerprint", "method", "task", "count", "density",
                "tensors", "dense", "size_bytes", "sparseft_version", "created"):
        value = info[key]
        if key == "density" and value is not None:
            value = f"{value:.6f}"
        print(f"{key:18s} {value}")
    return 0


def _load(model: str, diff, task: str | None):
    from sparseft.load.model import load_model, load_tokenizer

    task = task or diff.manifest.get("task")
    if task is None:
        raise ValueError("the diff's manifest names no task; pass --task ner|cls|lm")
    labels = diff.manifest.get("labels") if task != "lm" else None
    return load_model(model, task, labels=labels), load_tokenizer(model)


def _check_output(args: argparse.Namespace, *inputs: str) -> None:
    """Refuse a foreign or input-holding --output-dir before any loading (utils/outdir.py)."""
    from sparseft.utils.outdir import check_output_dir

    check_output_dir(args.output_dir, owner=f"diff {args.verb}", overwrite=args.overwrite, inputs=inputs, replace=True)


def _save(model, tokenizer, args: argparse.Namespace, manifest: dict, action: str) -> None:
    from sparseft.export.save import save_artifact

    meta = {k: v for k, v in manifest.items() if k != "tensors"}
    save_artifact(model, tokenizer, args.output_dir, configs={"diff": {**meta, "action": action}},
                  overwrite=args.overwrite, owner=f"diff {args.verb}")
    print(f"{action}: wrote {args.output_dir}")


def run_apply(args: argparse.Namespace) -> int:
    from sparseft.export.sparse_diff import apply_diff_, load_diff

    _check_output(args, args.diff, args.model)
    diff = load_diff(args.diff)
    model, tok = _load(args.model, diff, args.task)
    apply_diff_(model, diff, args.scale, force=args.force)
    _save(model, tok, args, diff.manifest, "apply")
    return 0


def run_revert(args: argparse.Namespace) -> int:
    from sparseft.export.sparse_diff import load_diff, revert_diff_

    _check_output(args, args.diff, args.model)
    diff = load_diff(args.diff)
    model, tok = _load(args.model, diff, args.task)
    revert_diff_(model, diff, force=args.force)
    _save(model, tok, args, diff.manifest, "revert")
    return 0


def run_compose(args: argparse.Namespace) -> int:
    from sparseft.export.sparse_diff import compose, load_diff, save_diff

    _check_output(args, *args.diffs)
    diffs = [load_diff(d) for d in args.diffs]
    if args.drop_heads:
        diffs = [d.without_dense() for d in diffs]
    out = compose(diffs, args.policy, force=args.force)
    out.manifest["components"] = [{**c, "path": p} for c, p in zip(out.manifest["components"], args.diffs)]
    save_diff(out, args.output_dir, overwrite=args.overwrite, owner="diff compose")
    print(f"compose: {len(diffs)} diffs -> {args.output_dir} ({out.count} entries, policy {args.policy})")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from sparseft.export.sparse_diff import compose, load_diff, merge

    _check_output(args, *args.diffs, args.base)
    diffs = [load_diff(d) for d in args.diffs]
    diff = diffs[0] if len(diffs) == 1 else compose(diffs, args.policy, force=args.force)
    model, tok = _load(args.base, diff, args.task)
    merge(model, diff, args.output_dir, tokenizer=tok, force=args.force, overwrite=args.overwrite, owner="diff merge")
    print(f"merge: {len(diffs)} diff(s) + {args.base} -> {args.output_dir}")
    return 0

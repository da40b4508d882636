"""`sparseft` entry point: one sub-command per module in COMMANDS, each with --help.

Each command module exposes `add_parser(subparsers)` that registers its verb and sets
`func(args) -> int`. User errors (bad file, bad config value, an output folder that cannot be
written) print one clear line and exit 2, not a traceback; a diverged training run (NaN loss)
prints one line and exits 1; `SPARSEFT_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from sparseft import __version__
from sparseft.cli import chat_cmd, demo, diff_cmd, eval_cmd, export_cmd, prune_cmd, quantize_cmd, run_cmd, train_cmd
from sparseft.cli import factorize_cmd
from sparseft.cli import plan_cmd
from sparseft.cli import compare_cmd
from sparseft.cli import moefy_cmd

COMMANDS = (train_cmd, eval_cmd, run_cmd, demo, chat_cmd, prune_cmd, quantize_cmd, export_cmd, diff_cmd, factorize_cmd,
            plan_cmd, compare_cmd, moefy_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparseft", description="Sparse fine-tuning and sparse compression of transformer models.")
    parser.add_argument("--version", action="version", version=f"sparseft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, KeyError) as exc:  # bad input, unwritable / full output folder
        if os.environ.get("SPARSEFT_DEBUG"):
            raise
        print(f"sparseft {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        loop = sys.modules.get("sparseft.train.loop")  # loaded if training ran; no import here
        if os.environ.get("SPARSEFT_DEBUG") or loop is None or not isinstance(exc, loop.TrainingDiverged):
            raise
        print(f"sparseft {args.command}: training diverged: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

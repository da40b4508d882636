"""`sparseft compare RUN_DIR... [-o DIR]`: one table and the Pareto plots across runs.

Each argument is a run folder (with metrics.json), a metrics.json file or a benchmark record
(benchmarks/results/*.json). Every evaluated model becomes a row: headline metric, trainable
parameters, artifact size, CPU latency (batch 1) and throughput (batch 32), train time, peak
memory. With `-o DIR`, DIR gets report.md, report.html, comparison.json and the plots (accuracy
vs size on disk and vs CPU throughput with the Pareto front marked, training curves, per-layer
values, size breakdown), each PNG with its data as JSON beside it.
"""

from __future__ import annotations

import argparse

from sparseft.cli.common import RawHelpFormatter, add_output_arg, add_overwrite_arg


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="one table and Pareto plots across runs' metrics.json",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=RawHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, metrics.json files or benchmark records")
    add_output_arg(p, default="", help="write report.md, report.html and the plots here")
    p.add_argument("--title", default="sparseft comparison", help="report title")
    p.add_argument("--no-html", action="store_true", help="do not write report.html")
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparseft.report.compare import compare
    from sparseft.utils.outdir import prepare_output_dir

    if args.output_dir:
        prepare_output_dir(args.output_dir, owner="compare", overwrite=args.overwrite, inputs=args.runs)
    comp = compare(args.runs, args.output_dir or None, title=args.title, html=not args.no_html)
    print(comp.text_table())
    if args.output_dir:
        print(f"\nreport: {args.output_dir}/report.md ({len(comp.figures)} plots)")
    return 0

"""`sparseft demo`: the quickstart main job, the product's story on the embedded MiniLM.

Full fine-tuning vs sparse fine-tuning at 1% vs LoRA at the same trainable count on a bundled
synthetic NER set (no downloads), then the sparse model compressed (structured pruning with
distillation + int8) and exported; every stage evaluated. Prints one comparison table and writes
`<output-dir>/report.md` (+ report.html and the plots). See `sparseft.demo.story`.
A few minutes on 2 CPU cores; `--quick` runs the same path on a tiny budget.
"""

from __future__ import annotations

import argparse

from sparseft.cli.common import HelpFormatter, add_model_arg, add_output_arg, add_overwrite_arg


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="quickstart: full vs sparse vs LoRA fine-tuning of MiniLM, then compression; "
                                    "one table and a report with plots",
                       formatter_class=HelpFormatter)
    add_output_arg(p, default="runs/demo", help="demo folder (one sub-folder per run)")
    add_model_arg(p, default="minilm", help="model alias, folder or hub id")
    p.add_argument("--quick", action="store_true", help="a few steps per run (checks the path; numbers mean nothing)")
    p.add_argument("--no-html", action="store_true", help="do not write report.html")
    add_overwrite_arg(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe overrides for every run, or STEP.KEY=VALUE for one (STEP: full, sparse, lora, "
                        "compressed), e.g. sparse.stages.finetune.lr=5e-3")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from sparseft.demo.story import run_demo

    t0 = time.perf_counter()
    print(f"sparseft demo: {args.model} on the bundled toy NER set -> {args.output_dir}"
          + (" (quick)" if args.quick else ""), flush=True)
    result = run_demo(args.output_dir, model=args.model, quick=args.quick, overrides=args.overrides,
                      overwrite=args.overwrite, html=not args.no_html)
    print()
    print(result.table)
    print()
    print(f"report: {result.report}" + ("" if args.no_html else f" (and {result.out_dir / 'report.html'})"))
    print(f"demo wall time: {time.perf_counter() - t0:.0f} s (model loads included)")
    return 0

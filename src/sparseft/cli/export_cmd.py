"""`sparseft export`: write a saved model as a compressed checkpoint and report its size.

    sparseft export runs/prune50/model --format compressed -o runs/prune50/compressed
    sparseft export runs/prune50/model -o out/p50 --float-dtype float16
    sparseft export runs/conll/model --format onnx --int8 -o out/conll-onnx   # onnxruntime
    sparseft export smollm2 --format gguf --gguf-type q8_0 -o out/smollm2-gguf  # llama.cpp

`-o` is `--output-dir` (`--output` is accepted too); MODEL may also be given as `--model`.

Sparse tensors are stored as bitmask + nonzero values (where that is smaller), quantized layers
as packed integers + scales; see docs/quantization.md. The size is printed against fp32 and the
export is checked by reloading it and comparing logits on random token ids (`--no-verify` skips).
To quantize first, use `sparseft quantize` (it ends with the same export).
"""

from __future__ import annotations

import argparse
import json

from sparseft.cli.common import HelpFormatter, add_model_arg, add_output_arg, add_overwrite_arg, resolve_model_arg


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a model as a compressed checkpoint (bitmask sparse + quantized)",
                       description="Export MODEL (a save_pretrained folder or alias) in --format.",
                       formatter_class=HelpFormatter)
    add_model_arg(p, positional=True, required=True, help="model folder (e.g. runs/prune/model) or alias")
    p.add_argument("--format", choices=["compressed", "onnx", "gguf"], default="compressed",
                   help="checkpoint format (onnx: encoders, read back by onnxruntime; gguf: Llama-family "
                        "decoders for llama.cpp, export/gguf.py)")
    p.add_argument("--gguf-type", choices=["f32", "f16", "bf16", "q8_0", "q4_0"], default="f16",
                   help="gguf: tensor type of the 2-D weights (norms stay f32)")
    p.add_argument("--int8", action="store_true", help="onnx: also write onnxruntime's dynamic int8 model")
    add_output_arg(p, required=True, legacy_output=True,
                   help="target folder (replaced if sparseft wrote it with `export`; else needs --overwrite)")
    add_overwrite_arg(p)
    p.add_argument("--task", choices=["ner", "cls", "lm"], help="task head (default: from the model config)")
    p.add_argument("--sparse", choices=["auto", "always", "never"], default="auto",
                   help="bitmask storage of 2-D tensors: where smaller, always, or never")
    p.add_argument("--float-dtype", choices=["keep", "float16", "bfloat16"], default="keep",
                   help="storage dtype of tensors that are not quantized")
    p.add_argument("--no-verify", action="store_true", help="skip reloading and comparing outputs")
    p.add_argument("--json", help="also write the size report to this JSON file")
    p.set_defaults(func=run)


def verify(model, directory: str, seq_len: int = 16, batch: int = 4) -> dict:
    """Reload `directory` and compare its logits with `model` on random token ids."""
    import torch

    from sparseft.export.compressed import load_compressed

    vocab = int(getattr(model.config, "vocab_size", 100))
    ids = torch.randint(5, max(6, vocab - 1), (batch, seq_len), generator=torch.Generator().manual_seed(0))
    reloaded = load_compressed(directory)
    with torch.no_grad():
        a = model.eval()(input_ids=ids).logits.float()
        b = reloaded(input_ids=ids).logits.float()
    return {"max_abs_logit_diff": float((a - b).abs().max()),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def run(args: argparse.Namespace) -> int:
    from sparseft.cli.prune_cmd import infer_task
    from sparseft.export.compressed import export_compressed
    from sparseft.load.model import load_model, load_tokenizer
    from sparseft.utils.io import atomic_write_json
    from sparseft.utils.outdir import check_output_dir

    resolve_model_arg(args)
    # before loading: never replace a foreign folder, or one that holds the model being read
    check_output_dir(args.output_dir, owner="export", overwrite=args.overwrite, inputs=[args.model], replace=True)
    task = args.task or infer_task(args.model)
    model = load_model(args.model, task)
    tokenizer = load_tokenizer(args.model)
    if args.format == "onnx":
        return run_onnx(args, model, tokenizer)
    if args.format == "gguf":
        return run_gguf(args, model, tokenizer)
    stats = export_compressed(model, args.output_dir, tokenizer=tokenizer, sparse=args.sparse,
                              float_dtype=args.float_dtype, overwrite=args.overwrite, owner="export")
    report = {**stats, "weights_mb": stats["weights_bytes"] / 2**20, "fp32_mb": stats["fp32_bytes"] / 2**20}
    if not args.no_verify:
        report["verify"] = verify(model, args.output_dir)
    print(f"wrote {args.output_dir}: {report['weights_mb']:.2f} MB of weights vs {report['fp32_mb']:.2f} MB fp32 "
          f"({stats['compression_ratio']:.2f}x smaller), global sparsity {stats['global_sparsity']:.1%}, "
          f"{stats['sparse_tensors']} bitmask tensors")
    if "verify" in report:
        print(f"reload check: max |logit diff| {report['verify']['max_abs_logit_diff']:.3g}, "
              f"argmax agreement {report['verify']['argmax_agreement']:.1%}")
    if args.json:
        atomic_write_json(args.json, report)
    else:
        print(json.dumps(report, indent=2, default=str))
    return 0


def run_onnx(args: argparse.Namespace, model, tokenizer) -> int:
    """`--format onnx`: model.onnx (+ model_int8.onnx), checked in onnxruntime unless --no-verify."""
    from sparseft.export.onnx import export_onnx
    from sparseft.utils.io import atomic_write_json

    stats = export_onnx(model, args.output_dir, tokenizer=tokenizer, int8=args.int8, verify=not args.no_verify,
                        overwrite=args.overwrite, owner="export")
    sizes = f"{stats['onnx_bytes'] / 2**20:.2f} MB fp32" + (
        f", {stats['int8_bytes'] / 2**20:.2f} MB int8" if stats["int8_bytes"] else "")
    print(f"wrote {args.output_dir}: {sizes}")
    for kind, check in (stats.get("verify") or {}).items():
        print(f"onnxruntime check ({kind}): max |logit diff| {check['max_abs_logit_diff']:.3g}, "
              f"argmax agreement {check['argmax_agreement']:.1%}")
    if args.json:
        atomic_write_json(args.json, stats)
    return 0


def run_gguf(args: argparse.Namespace, model, tokenizer) -> int:
    """`--format gguf`: OUTPUT/model-<type>.gguf (tokenizer copied from a source GGUF when the model
    came from one), read back by transformers' GGUF loader and compared unless --no-verify."""
    from pathlib import Path

    import torch

    from sparseft.export.gguf import export_gguf
    from sparseft.load.model import resolve_model
    from sparseft.utils.io import atomic_write_json
    from sparseft.utils.outdir import replace_dir

    src = resolve_model(args.model)
    source_gguf = Path(src.path) / src.gguf_file if src.gguf_file else None
    name = f"model-{args.gguf_type}.gguf"
    with replace_dir(args.output_dir, owner="export", overwrite=args.overwrite, inputs=[args.model]) as tmp:
        stats = export_gguf(model, Path(tmp) / name, tokenizer=None if source_gguf else tokenizer,
                            tokenizer_gguf=source_gguf, qtype=args.gguf_type)
    stats["path"] = str(Path(args.output_dir) / name)
    print(f"wrote {stats['path']}: {stats['bytes'] / 2**20:.2f} MB, tensor types {stats['tensor_types']}")
    if not args.no_verify:
        from transformers import AutoModelForCausalLM

        back = AutoModelForCausalLM.from_pretrained(args.output_dir, gguf_file=name, dtype=torch.float32).eval()
        ids = torch.randint(5, max(6, int(model.config.vocab_size) - 1), (2, 16),
                            generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            a, b = model.eval()(input_ids=ids).logits.float(), back(input_ids=ids).logits.float()
        stats["verify"] = {"max_abs_logit_diff": float((a - b).abs().max()),
                           "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}
        print(f"transformers GGUF read-back: max |logit diff| {stats['verify']['max_abs_logit_diff']:.3g}, "
              f"argmax agreement {stats['verify']['argmax_agreement']:.1%}")
    if args.json:
        atomic_write_json(args.json, stats)
    return 0

"""`sparseft chat-sft` (chat supervised fine-tuning) and `sparseft chat MODEL` (interactive prompt).

chat-sft builds a recipe (chat_data -> [chat_eval before] -> chat_sft -> chat_eval -> [save]) and
runs it like `sparseft run`, so the CLI and recipes share one code path. DeepSpeed-Chat's flag
names are accepted next to ours (`--max_seq_len`, `--lora_dim`, `--lora_module_name`,
`--zero_stage`, `--offload`, `--gradient_checkpointing`, `--data_split`,
`--per_device_train_batch_size`, `--learning_rate`, ...), and so are the HF / TRL ones every
sparseft verb takes (`--model_name_or_path`, `--output_dir`, `--num_train_epochs`, `--max_length`
for `--max-seq-len`, ...). `--lr` defaults to the mode's value in sparseft/train/defaults.py
(DEFAULT_LR["chat_<mode>"]), written to the run's recipe.yaml. With `--num-processes N` or
`--zero_stage > 0` it writes the recipe (and the Accelerate/DeepSpeed config) into the output
folder and starts the launcher (see sparseft.chat.launch).

    sparseft chat-sft --model smollm2 --train ../shared/data/dolly_open_qa/train.jsonl \\
        --eval ../shared/data/dolly_open_qa/validation.jsonl --mode sparse --density 0.01
    sparseft chat-sft ... --num-processes 2                       # 2 CPU processes (torchrun, gloo)
    echo "What is a polygon?" | sparseft chat smollm2 --diff runs/chat_sft/sft/diff
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from sparseft.chat.launch import (ZERO_STAGES, in_launched_process, launch_command, launch_env,
                                  require_deepspeed, write_accelerate_config)
from sparseft.cli.attention_args import add_attention_arg, attention_stages
from sparseft.cli.common import HelpFormatter, add_model_arg, add_output_arg, add_overwrite_arg, resolve_model_arg
from sparseft.train.defaults import DEFAULT_LR

DTYPES = {"fp32": "no", "fp16": "fp16", "bf16": "bf16", "auto": "auto", "no": "no"}


def add_parser(sub) -> None:
    _add_sft_parser(sub)
    _add_chat_parser(sub)


def _add_sft_parser(sub) -> None:
    from sparseft.chat.stage import ChatSFTConfig
    from sparseft.cli.flags import add_config_flags

    by_mode = ", ".join(f"{k[5:]} {v:g}" for k, v in DEFAULT_LR.items() if k.startswith("chat_"))
    p = sub.add_parser("chat-sft", help="chat supervised fine-tuning (full, sparse or LoRA)",
                       description="Fine-tune a decoder LM on prompt -> response data with loss on the "
                                   "assistant tokens. DeepSpeed-Chat flag names are accepted as aliases.",
                       formatter_class=HelpFormatter)
    add_model_arg(p, default="smollm2", help="alias (smollm2), folder, .gguf or hub id")
    add_output_arg(p, default="runs/chat_sft", help="run folder")
    add_overwrite_arg(p)
    d = p.add_argument_group("data")
    d.add_argument("--train", "--data_path", dest="train", required=True, help="chat training file (JSONL/JSON)")
    d.add_argument("--eval", default="", help="eval file (default: hold out --eval-fraction of train)")
    d.add_argument("--format", default="auto", help="auto, messages, prompt_completion, alpaca, dschat, "
                                                     "human_assistant or gsm8k")
    d.add_argument("--template", default="auto", help="auto (model's chat template, else fallback), model, "
                                                       "fallback or a Jinja file")
    d.add_argument("--max-seq-len", "--max_seq_len", "--max-length", "--max_length", dest="max_seq_len", type=int,
                   default=512,
                   help="tokens per example (the response is never cut away entirely)")
    d.add_argument("--loss-on", choices=["assistant", "all"], default="assistant",
                   help="assistant: loss on assistant tokens only; all: every token (DeepSpeed-Chat)")
    d.add_argument("--packing", action="store_true", help="pack several examples per sequence")
    d.add_argument("--data-split", "--data_split", dest="data_split", default="",
                   help="DeepSpeed-Chat split weights, e.g. 2,4,4 (this run uses portion --data-split-index)")
    d.add_argument("--data-split-index", type=int, default=0, help="portion of --data-split (0 = step 1)")
    d.add_argument("--eval-fraction", type=float, default=0.1, help="held-out share when --eval is absent")
    d.add_argument("--train-limit", type=int, help="first N training conversations")
    d.add_argument("--eval-limit", type=int, help="first N eval conversations")
    m = p.add_argument_group("mode")
    m.add_argument("--mode", choices=["full", "sparse", "lora"],
                   help="training mode (default: lora if --lora_dim > 0, else full)")
    add_config_flags(m, ChatSFTConfig, ["mask", "density"])
    m.add_argument("--lora-dim", "--lora_dim", dest="lora_dim", type=int, default=0,
                   help="LoRA rank (> 0 selects mode lora; 0 with --mode lora means 8)")
    m.add_argument("--lora-dim-for-density", type=float,
                   help="LoRA: pick the rank whose trainable count matches this density (e.g. 0.01)")
    m.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: = rank, scaling 1)")
    m.add_argument("--lora-module-name", "--lora_module_name", dest="lora_module_name", default="layers.",
                   help="LoRA on Linear layers whose name contains this")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", "--num_train_epochs", dest="epochs", type=int, default=1, help="passes over the data")
    t.add_argument("--max-steps", "--max_steps", dest="max_steps", type=int,
                   help="optimizer steps (overrides --epochs)")
    t.add_argument("--batch-size", "--per_device_train_batch_size", dest="batch_size", type=int, default=4,
                   help="examples (or packed rows) per micro-batch per process")
    t.add_argument("--eval-batch-size", "--per_device_eval_batch_size", dest="eval_batch_size", type=int,
                   default=8, help="eval batch size")
    t.add_argument("--grad-accum", "--gradient_accumulation_steps", dest="grad_accum", type=int, default=1,
                   help="micro-batches per optimizer step")
    t.add_argument("--lr", "--learning_rate", dest="lr", type=float,
                   help=f"peak learning rate (default: the mode's, sparseft/train/defaults.py: {by_mode})")
    t.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=float, default=0.0,
                   help="AdamW weight decay")
    t.add_argument("--warmup-ratio", "--warmup_ratio", dest="warmup_ratio", type=float, default=0.1,
                   help="share of steps for linear warm-up")
    t.add_argument("--mixed-precision", dest="mixed_precision", default="auto",
                   help="autocast: auto, no/fp32, bf16 or fp16")
    t.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                   help="DeepSpeed-Chat's --dtype: the frozen weights are stored (and computed) in it; "
                        "trainable tensors (sparse values, LoRA, heads) stay fp32 (default: fp32)")
    t.add_argument("--eval-every", default="epoch", help="'epoch', 'never' or every N steps")
    t.add_argument("--log-every", type=int, default=10, help="log the training loss every N steps")
    t.add_argument("--seed", type=int, default=42, help="random seed")
    t.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in --output-dir")
    t.add_argument("--gradient-checkpointing", "--gradient_checkpointing", dest="gradient_checkpointing",
                   action="store_true", help="recompute activations in backward (less memory)")
    s = p.add_argument_group("processes / DeepSpeed")
    s.add_argument("--num-processes", "--nproc", dest="num_processes", type=int, default=1,
                   help="data-parallel processes (torchrun; gloo on CPU)")
    s.add_argument("--zero-stage", "--zero_stage", dest="zero_stage", type=int, choices=ZERO_STAGES, default=0,
                   help="DeepSpeed ZeRO stage (> 0 launches through accelerate + DeepSpeed)")
    s.add_argument("--offload", action="store_true", help="ZeRO CPU offload (optimizer; parameters at stage 3)")
    s.add_argument("--distributed", choices=["ddp", "fsdp", "deepspeed"], default="ddp",
                   help="ddp: whole model per process; fsdp: FSDP2 sharding (torchrun); deepspeed: ZeRO "
                        "(set by --zero_stage > 0); see docs/scaling.md")
    o = p.add_argument_group("evaluation / output")
    o.add_argument("--eval-before", action="store_true", help="also evaluate the model before training")
    o.add_argument("--samples", type=int, default=0, help="generate replies for the first N eval prompts")
    o.add_argument("--max-new-tokens", type=int, default=64, help="reply length of the --samples (greedy)")
    o.add_argument("--no-save", action="store_true", help="full mode: do not save the fine-tuned model")
    add_attention_arg(p)
    p.set_defaults(func=run_sft)


def _add_chat_parser(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal (reads stdin)",
                       description="Interactive chat: each input line is a user turn; /reset clears the "
                                   "history, /exit quits. Works with piped stdin.",
                       formatter_class=HelpFormatter)
    add_model_arg(p, positional=True, required=True, help="alias (smollm2), folder, .gguf or hub id")
    p.add_argument("--diff", help="sparse diff folder to apply to MODEL first")
    p.add_argument("--adapter", help="LoRA adapter folder (peft) to merge into MODEL first")
    p.add_argument("--force", action="store_true", help="apply --diff even if the base check fails")
    p.add_argument("--template", default="auto", help="auto, model, fallback or a Jinja file")
    p.add_argument("--system", default="", help="system message")
    p.add_argument("--max-new-tokens", type=int, default=128, help="reply length limit")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass")
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling (0: off)")
    p.add_argument("--seed", type=int, help="seed for sampling")
    p.set_defaults(func=run_chat)


def build_recipe_dict(args: argparse.Namespace) -> dict:
    """The recipe `sparseft chat-sft` runs (also written to the output folder when launching)."""
    mode = args.mode or ("lora" if args.lora_dim > 0 or args.lora_dim_for_density else "full")
    if args.mixed_precision not in DTYPES:
        raise ValueError(f"unknown --mixed-precision/--dtype {args.mixed_precision!r}; valid: {sorted(DTYPES)}")
    if args.offload and args.zero_stage == 0 and args.distributed != "fsdp":
        raise ValueError("--offload needs --zero_stage 1, 2 or 3 (or --distributed fsdp on GPUs)")
    distributed = "deepspeed" if args.zero_stage > 0 else args.distributed
    if distributed == "deepspeed" and args.zero_stage == 0:
        raise ValueError("--distributed deepspeed needs --zero_stage 1, 2 or 3")
    data = {"task": "lm", "train": args.train}
    if args.eval:
        data["eval"] = args.eval
    chat_data = {"name": "data", "method": "chat_data", "format": args.format, "template": args.template,
                 "max_seq_len": args.max_seq_len, "loss_on": args.loss_on, "data_split": args.data_split,
                 "data_split_index": args.data_split_index, "eval_fraction": args.eval_fraction,
                 "train_limit": args.train_limit, "eval_limit": args.eval_limit}
    train = {"epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size,
             "eval_batch_size": args.eval_batch_size, "grad_accum": args.grad_accum,
             "lr": DEFAULT_LR[f"chat_{mode}"] if args.lr is None else args.lr, "weight_decay": args.weight_decay,
             "warmup_ratio": args.warmup_ratio, "mixed_precision": DTYPES[args.mixed_precision],
             "distributed": distributed, "zero_stage": args.zero_stage or 2, "offload": args.offload,
             "base_dtype": args.dtype or "fp32",
             "eval_every": int(args.eval_every) if str(args.eval_every).isdigit() else args.eval_every,
             "log_every": args.log_every, "resume": not args.no_resume, "group_by_length": False,
             "progress": sys.stderr.isatty()}
    sft = {"name": "sft", "method": "chat_sft", "mode": mode, "packing": args.packing,
           "gradient_checkpointing": args.gradient_checkpointing, "train": train}
    if mode == "sparse":
        sft.update(mask=args.mask, density=args.density)
    if mode == "lora":
        sft.update(lora_dim=args.lora_dim or 8, lora_alpha=args.lora_alpha, lora_module_name=args.lora_module_name,
                   lora_dim_for_density=args.lora_dim_for_density)
    evals = {"method": "chat_eval", "batch_size": args.eval_batch_size, "samples": args.samples,
             "generate": {"max_new_tokens": args.max_new_tokens}}
    stages = [chat_data, *attention_stages(args)]
    if args.eval_before:
        stages.append({"name": "before", **evals, "samples": 0})
    stages += [sft, {"name": "after", **evals}]
    if mode == "full" and not args.no_save:
        stages.append({"name": "save", "method": "save"})
    return {"model": args.model, "data": data, "output_dir": args.output_dir, "seed": args.seed, "stages": stages}


def run_sft(args: argparse.Namespace) -> int:
    from sparseft.config.recipe import Recipe

    raw = build_recipe_dict(args)
    recipe = Recipe.from_dict(raw)  # validates the recipe keys before anything is launched
    if (args.num_processes > 1 or args.zero_stage > 0) and not in_launched_process():
        return _launch(args, recipe)
    from sparseft.pipeline import run as run_recipe

    run_recipe(recipe, overwrite=args.overwrite)
    return 0


def _launch(args: argparse.Namespace, recipe) -> int:
    """Write the recipe (and DeepSpeed config) into the output folder and start the launcher."""
    from sparseft.methods import build_stage_config
    from sparseft.pipeline import prepare_run_dir
    from sparseft.utils.io import atomic_write_text

    for stage in recipe.stages:  # fail here, not in N processes
        build_stage_config(stage, recipe)
    prepare_run_dir(recipe, overwrite=args.overwrite)  # the launched `sparseft run` then finds it ours
    out = Path(args.output_dir)
    acc = None
    if args.zero_stage > 0:
        require_deepspeed(args.zero_stage)
        acc = write_accelerate_config(out, zero_stage=args.zero_stage, offload=args.offload,
                                      batch_size=args.batch_size, grad_accum=args.grad_accum,
                                      num_processes=args.num_processes, max_grad_norm=1.0)
    recipe_path = out / "chat_sft_recipe.yaml"
    atomic_write_text(recipe_path, recipe.to_yaml())
    cmd = launch_command(recipe_path, num_processes=args.num_processes, accelerate_config=acc)
    print("launching: " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd, env=launch_env(deepspeed=args.zero_stage > 0))


def run_chat(args: argparse.Namespace) -> int:
    import torch

    from sparseft.chat.generate import GenerateConfig, generate_reply
    from sparseft.chat.template import resolve_template
    from sparseft.load.model import load_model, load_tokenizer

    gen = GenerateConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                         top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    resolve_model_arg(args)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, "lm")
    if args.diff:
        from sparseft.export.sparse_diff import apply_diff_, load_diff

        apply_diff_(model, load_diff(args.diff), force=args.force)
    if args.adapter:
        try:
            from peft import PeftModel
        except ImportError:
            raise ValueError("--adapter needs peft: pip install peft") from None
        model = PeftModel.from_pretrained(model, args.adapter).merge_and_unload()
    model.eval()
    if torch.cuda.is_available():
        model.cuda()
    template = resolve_template(tokenizer, args.template)
    interactive = sys.stdin.isatty()
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    if interactive:
        print("chat with the model; /reset clears the history, /exit quits", file=sys.stderr)
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = []
            continue
        history.append({"role": "user", "content": text})
        reply = generate_reply(model, template, system + history, gen)
        history.append({"role": "assistant", "content": reply})
        print(("assistant> " if interactive else "") + reply, flush=True)
    return 0

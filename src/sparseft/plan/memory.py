"""Per-device memory of fine-tuning, from a ModelShape: weights, gradients, optimizer state, activations.

What it models: the tensors training keeps alive at its peak (the start of backward), in bytes,
per device, for AdamW (two fp32 moments per trainable entry, in the trainable tensor's dtype):

  weights      frozen entries at `base_dtype` + trainable entries at `train_bytes` (fp32, or bf16
               when full fine-tuning runs with base_dtype bf16: the model itself is cast);
               sparse adds its int64 indices (8 B/entry, replicated: buffers are never sharded).
  gradients    one per trainable entry (train_bytes); sparse also builds one dense fp32 gradient
               of its largest targeted weight transiently in backward (SparseDelta).
  optimizer    2 x trainable entries x train_bytes (exp_avg, exp_avg_sq).
  activations  what autograd saves per token, per block (elements, in the activation dtype),
               counted with `saved_tensors_hooks` on SmolLM2- and MiniLM-sized blocks (within 3%):
                 decoder (Llama-style, SDPA):  9 h + 4 i
                 encoder (BERT-style, SDPA):   13 h + 2 i, plus 2 a s (+ a s mask bytes) when the
                                               config has attention dropout (training then takes
                                               SDPA's math path, which stores the probabilities)
               plus 3 V per token for the LM head of a decoder (log-softmax saved, then its
               gradient and the logits' gradient in backward, fp32). `attention="eager"` adds
               2 a s per token per block. Gradient checkpointing keeps one h per block plus
               one block's set.
  transient    FSDP: two all-gathered units (current + prefetched); ZeRO-3: the live set
               (max(largest block, stage3_max_live_parameters = 3e7)).
  step         torch's foreach AdamW builds one temporary per trainable entry (the denominator
               sqrt(v) / bias correction) during optimizer.step().

Peak: gradients are created during backward while activations are freed (the loop zeroes them
with set_to_none), so the backward peak holds W + O + max(G, A) + transient (multi-process DDP
keeps its gradient buckets for the whole run: W + O + G + A); the optimizer-step peak holds
W + O + G + step. The total is the larger of the two.

Strategies and what each shards over N devices (W weights, G grads, O optimizer state):
  ddp    W, G, O replicated                       fsdp   W/N, G/N, O/N (+ two gathered units)
  zero2  W replicated, G/N, O/N                  zero3  W/N, G/N, O/N (+ live set)
  zero2-offload  O/N and fp32 G/N on the host    zero3-offload  W/N, G/N, O/N on the host
Host memory for offload is reported per process (`host`).

What it does not model (state it next to any comparison): the Python / torch / CUDA runtime
(~0.3-0.5 GB RSS on CPU, ~0.5-1 GB CUDA context), allocator caching and fragmentation, the data
loader, communication buckets (DeepSpeed's reduce/allgather buckets, ~0.5 GB by default), and
temporary buffers of single kernels beyond the ones listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparseft.plan.shapes import ModelShape

MODES = ("full", "sparse", "lora")
STRATEGIES = ("ddp", "fsdp", "zero2", "zero2-offload", "zero3", "zero3-offload")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
LIVE_PARAMS_ZERO3 = 30_000_000  # stage3_max_live_parameters in the generated DeepSpeed config


@dataclass(frozen=True)
class PlanInput:
    """One planning question (validated)."""

    mode: str = "full"
    density: float = 0.01
    rank: int = 8
    devices: int = 1
    batch_size: int = 1
    seq_len: int = 2048
    base_dtype: str = "fp32"
    act_dtype: str = "fp32"
    gradient_checkpointing: bool = False
    attention: str = "sdpa"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        for name in ("rank", "devices", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("base_dtype", "act_dtype"):
            if getattr(self, name) not in DTYPE_BYTES:
                raise ValueError(f"{name} must be one of {tuple(DTYPE_BYTES)}, got {getattr(self, name)!r}")
        if self.attention not in ("sdpa", "eager"):
            raise ValueError(f"attention must be 'sdpa' or 'eager', got {self.attention!r}")


@dataclass(frozen=True)
class PlanRow:
    """Bytes per device (host: per process, for offload)."""

    strategy: str
    devices: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    transient: float
    host: float
    step: float = 0.0


    @property
    def total(self) -> float:
        """Peak per device: max(backward peak, optimizer-step peak); see the module docstring."""
        both = self.strategy == "ddp" and self.devices > 1
        live = self.gradients + self.activations if both else max(self.gradients, self.activations)
        backward = self.weights + self.optimizer + self.transient + live
        return max(backward, self.weights + self.optimizer + self.gradients + self.step)


@dataclass(frozen=True)
class Budget:
    """Unsharded byte counts of one configuration (what the strategies divide up)."""

    trainable: int
    frozen_bytes: float
    train_bytes: int
    index_bytes: float
    grad_transient: float
    activations: float


def trainable_count(shape: ModelShape, inp: PlanInput) -> int:
    """Trainable entries: all (full), round(density x Linear entries) (sparse), r x sum(in+out) (lora)."""
    if inp.mode == "full":
        return shape.params
    if inp.mode == "sparse":
        return max(1, round(inp.density * shape.linear_params))
    return inp.rank * shape.lora_per_rank


def activation_bytes(shape: ModelShape, inp: PlanInput) -> float:
    """Saved activations of one device's micro-batch (see module docstring for the per-token counts)."""
    tokens = inp.batch_size * inp.seq_len
    a_bytes = DTYPE_BYTES[inp.act_dtype]
    h, i = shape.hidden, shape.intermediate
    per_block = (9 * h + 4 * i) * a_bytes if shape.decoder else (13 * h + 2 * i) * a_bytes
    if shape.attention_dropout and not shape.decoder:
        per_block += shape.heads * inp.seq_len * (2 * a_bytes + 1)
    if inp.attention == "eager":
        per_block += 2 * shape.heads * inp.seq_len * a_bytes
    if inp.gradient_checkpointing:
        blocks = shape.layers * h * a_bytes + per_block
    else:
        blocks = shape.layers * per_block
    head = 3 * shape.vocab * 4 if shape.decoder else 0
    return tokens * (blocks + head)


def budget(shape: ModelShape, inp: PlanInput) -> Budget:
    trainable = trainable_count(shape, inp)
    base = DTYPE_BYTES[inp.base_dtype]
    if inp.mode == "full":
        train_bytes, frozen_bytes = base, 0.0  # full + bf16: the model itself is bf16
    elif inp.mode == "sparse":
        train_bytes, frozen_bytes = 4, shape.params * base  # values are deltas beside the frozen W0
    else:
        train_bytes, frozen_bytes = 4, shape.params * base
    return Budget(trainable=trainable, frozen_bytes=frozen_bytes, train_bytes=train_bytes,
                  index_bytes=8.0 * trainable if inp.mode == "sparse" else 0.0,
                  grad_transient=4.0 * shape.largest_linear if inp.mode == "sparse" else 0.0,
                  activations=activation_bytes(shape, inp))


def plan_row(shape: ModelShape, inp: PlanInput, strategy: str) -> PlanRow:
    """Per-device bytes for one strategy (see module docstring)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    b, n = budget(shape, inp), inp.devices
    train_w = b.trainable * b.train_bytes
    weights_full = b.frozen_bytes + train_w
    grads, optim = b.trainable * b.train_bytes, 2.0 * b.trainable * b.train_bytes
    compute_bytes = DTYPE_BYTES[inp.base_dtype] if inp.mode != "full" else b.train_bytes
    unit = shape.block_params * compute_bytes
    host = transient = 0.0
    if strategy == "ddp":
        w, g, o = weights_full, grads, optim
    elif strategy == "fsdp":
        w, g, o, transient = weights_full / n, grads / n, optim / n, 2 * unit
    elif strategy == "zero2":
        w, g, o = weights_full, grads / n, optim / n
    elif strategy == "zero2-offload":
        w, g, o = weights_full, grads / n, 0.0
        host = optim / n + b.trainable * 4 / n
    elif strategy == "zero3":
        w, g, o = weights_full / n, grads / n, optim / n
        transient = max(unit, LIVE_PARAMS_ZERO3 * compute_bytes)
    else:  # zero3-offload
        w, g, o = 0.0, 0.0, 0.0
        host = (weights_full + grads + optim) / n
        transient = max(unit, LIVE_PARAMS_ZERO3 * compute_bytes)
    w += b.index_bytes  # int64 indices: buffers, replicated under every strategy
    step = 0.0 if strategy.endswith("offload") else grads / (1 if strategy == "ddp" else n)
    return PlanRow(strategy=strategy, devices=n, weights=w, gradients=g + b.grad_transient, optimizer=o,
                   activations=b.activations, transient=transient, host=host, step=step)


def plan(shape: ModelShape, inp: PlanInput, strategies=STRATEGIES) -> list[PlanRow]:
    """One PlanRow per strategy. ddp with 1 device is the single-process run."""
    return [plan_row(shape, inp, s) for s in strategies]


def format_table(shape: ModelShape, inp: PlanInput, rows: list[PlanRow]) -> str:
    """A Markdown table in GiB, with a header line saying what was planned."""
    trainable = trainable_count(shape, inp)
    what = {"full": "full", "sparse": f"sparse (density {inp.density:g})", "lora": f"LoRA (rank {inp.rank})"}
    head = (f"{shape.name}: {shape.params / 1e9:.3g}B parameters, {what[inp.mode]} -> {trainable:,} trainable; "
            f"{inp.devices} device(s), batch {inp.batch_size} x {inp.seq_len} tokens per device, base "
            f"{inp.base_dtype}, activations {inp.act_dtype}"
            + (", gradient checkpointing" if inp.gradient_checkpointing else ""))
    lines = [head, "",
             "| strategy | weights | gradients | optimizer | activations | transient | total / device | host / process |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    gib = 2.0 ** 30
    for r in rows:
        cells = [r.weights, r.gradients, r.optimizer, r.activations, r.transient, r.total, r.host]
        lines.append(f"| {r.strategy} | " + " | ".join(f"{c / gib:.2f}" for c in cells) + " |")
    lines.append("")
    lines.append("GiB per device; AdamW; total = the larger of the backward peak (weights + optimizer + "
                 "transient + max(gradients, activations); both under multi-process DDP) and the optimizer-step "
                 "peak; the Python/CUDA runtime, allocator caching and communication buckets are not included "
                 "(sparseft.plan.memory).")
    return "\n".join(lines)

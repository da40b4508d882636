"""What the memory planner needs to know about a model, from its config alone (no weights loaded).

`model_shape(name)` accepts
  * a bundled config: `llama-3-8b`, `llama-3-70b`, `llama-3.2-1b` (plan/configs/*.json, the
    architecture fields of the hub config.json files, so they work offline),
  * a local `config.json`, a model folder, a `.gguf` file, or a sparseft alias (`minilm`, `smollm2`),
and builds the transformers model on the `meta` device (`from_config` under `torch.device("meta")`:
shapes without storage, a few seconds for 70B) to count parameters exactly, find the nn.Linear
weights (targets of sparse fine-tuning and LoRA) and the largest block (an FSDP unit / ZeRO-3
live set). Architecture numbers (hidden, intermediate, heads, layers, vocab) come from the config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn

BUNDLED = ("llama-3-8b", "llama-3-70b", "llama-3.2-1b")


@dataclass(frozen=True)
class ModelShape:
    """Counts and dimensions; every count is a number of parameter entries."""

    name: str
    decoder: bool                 # causal LM (logits over the vocabulary per token) or encoder
    params: int                   # all parameters (tied weights once)
    linear_params: int            # entries of the nn.Linear weights in the blocks (sparse targets)
    lora_per_rank: int            # sum of (in + out) over those Linear layers: LoRA rank r has r * this
    largest_linear: int           # entries of the largest targeted Linear weight
    block_params: int             # parameters of the largest block (one FSDP unit)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_dim: int                   # num_key_value_heads * head_dim (== hidden without GQA)
    vocab: int
    attention_dropout: bool = False  # encoders with attention dropout store the probabilities (math SDPA)


def _bundled_config(name: str) -> dict | None:
    key = name.lower().removeprefix("meta-llama/").replace("meta-", "")
    if key not in BUNDLED:
        return None
    text = resources.files("sparseft.plan").joinpath("configs", f"{key}.json").read_text()
    data = json.loads(text)
    data.pop("_source", None)
    return data


def load_config(name: str):
    """A transformers PretrainedConfig for `name` (see module docstring), without weights."""
    from transformers import AutoConfig

    data = _bundled_config(name)
    path = Path(name)
    if data is None and path.is_file() and path.name.endswith(".json"):
        data = json.loads(path.read_text())
    if data is not None:
        if "model_type" not in data:
            raise ValueError(f"{name}: config has no model_type; is it a transformers config.json?")
        fields = {k: v for k, v in data.items() if k not in ("model_type", "architectures")}
        cfg = AutoConfig.for_model(data["model_type"], **fields)
        cfg.architectures = data.get("architectures")
        return cfg
    if path.is_dir() and (path / "config.json").exists():
        return AutoConfig.from_pretrained(str(path))
    from sparseft.load.model import resolve_model

    try:
        src = resolve_model(name)
    except Exception as exc:  # an unknown name: say what works offline
        raise ValueError(f"cannot plan for {name!r}: not a bundled config ({', '.join(BUNDLED)}), a local "
                         f"config.json / model folder / .gguf, or an alias ({exc})") from None
    kwargs = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    return AutoConfig.from_pretrained(src.path, **kwargs)


def _is_decoder(cfg) -> bool:
    archs = cfg.architectures or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return True
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    encoders = ("bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra", "xlm-roberta", "mpnet")
    return not archs and cfg.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and cfg.model_type not in encoders


def meta_model(cfg) -> nn.Module:
    """The model built on the meta device (no memory, no init cost beyond module creation)."""
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModelForCausalLM if _is_decoder(cfg) else AutoModel
    with torch.device("meta"):
        return cls.from_config(cfg)


def shape_of(model: nn.Module, cfg, name: str = "") -> ModelShape:
    """ModelShape of a (meta or real) model and its config."""
    from sparseft.train.distributed import block_modules

    blocks = block_modules(model)
    block_ids = {id(p) for b in blocks for p in b.parameters()}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) in block_ids]
    hidden = int(cfg.hidden_size)
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    return ModelShape(
        name=name or getattr(cfg, "_name_or_path", "") or cfg.model_type,
        decoder=_is_decoder(cfg),
        params=sum(p.numel() for p in model.parameters()),
        linear_params=sum(m.weight.numel() for m in linears),
        lora_per_rank=sum(m.in_features + m.out_features for m in linears),
        largest_linear=max((m.weight.numel() for m in linears), default=0),
        block_params=max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0),
        layers=int(cfg.num_hidden_layers), hidden=hidden, intermediate=int(cfg.intermediate_size),
        heads=heads, kv_dim=kv_heads * head_dim, vocab=int(cfg.vocab_size),
        attention_dropout=float(getattr(cfg, "attention_probs_dropout_prob", 0.0)
                                or getattr(cfg, "attention_dropout", 0.0) or 0.0) > 0)


def model_shape(name: str) -> ModelShape:
    """ModelShape for a bundled config, config.json, folder, .gguf or alias (no weights loaded)."""
    cfg = load_config(name)
    return shape_of(meta_model(cfg), cfg, name)

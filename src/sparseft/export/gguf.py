"""Write a Llama-family decoder as a GGUF file that llama.cpp and transformers' GGUF loader read.

    >>> from sparseft.export.gguf import export_gguf                       # doctest: +SKIP
    >>> export_gguf(model, "out/model-q8_0.gguf", tokenizer=tok, qtype="q8_0")  # doctest: +SKIP
    >>> AutoModelForCausalLM.from_pretrained("out", gguf_file="model-q8_0.gguf")  # doctest: +SKIP

Notable choices:
  * Tensor names come from transformers' own GGUF name map (`get_gguf_hf_weights_map`), inverted,
    so the file uses exactly the names transformers' loader (and llama.cpp) expects.
  * llama.cpp's rotary layout differs from HF's: q_proj / k_proj rows are permuted as
    llama.cpp's `convert_hf_to_gguf.py` does (transformers' loader undoes this on read).
  * Quantized types (`q8_0`, `q4_0`) apply to 2-D weights whose rows are a multiple of the
    32-value block; norms and other 1-D tensors stay F32 (as llama.cpp does), and a 2-D weight
    whose rows do not fit the block falls back to F16 (counted in the returned stats).
    With `q4_0` the token embedding is stored as Q8_0 (llama.cpp's own mixes keep it above 4 bits).
  * Tied embeddings: no `output.weight` is written, which is how GGUF marks tied weights.
  * Tokenizer: copied verbatim from a source GGUF (`tokenizer_gguf=`, what a model loaded from
    the bundled SmolLM2 file should use), else built from a Hugging Face BPE tokenizer
    (`tokenizer.ggml.model = gpt2`, vocabulary, token types, merges, special ids).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

QTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
ARCHES = {"llama": "llama"}  # HF model_type -> GGUF architecture this writer supports
_BLOCK = 32  # values per Q8_0 / Q4_0 block


def _permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's q/k row permutation (HF rotate-half layout -> interleaved pairs)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_to_gguf_names(model) -> dict[str, str]:
    """HF state-dict name -> GGUF tensor name, from transformers' own (inverted) map."""
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    gguf_to_hf = get_gguf_hf_weights_map(model, TensorProcessor())
    return {hf: g for g, hf in gguf_to_hf.items()}


def _tensor_type(name: str, array: np.ndarray, qtype: str):
    import gguf

    T = gguf.GGMLQuantizationType
    if array.ndim < 2 or qtype == "f32":
        return T.F32
    if qtype == "f16":
        return T.F16
    if qtype == "bf16":
        return T.BF16
    if array.shape[-1] % _BLOCK:
        return T.F16  # rows do not split into 32-value blocks
    if qtype == "q4_0" and name == "token_embd.weight":
        return T.Q8_0
    return T.Q8_0 if qtype == "q8_0" else T.Q4_0


def _write_config(writer, config, arch: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    writer.add_rope_freq_base(float(theta or getattr(config, "rope_theta", 10000.0)))
    if isinstance(rope, dict) and rope.get("rope_type", "default") not in ("default", None):
        raise ValueError(f"GGUF export: rope scaling {rope.get('rope_type')!r} is not supported by this writer")
    writer.add_rope_dimension_count(int(head_dim))
    writer.add_vocab_size(int(config.vocab_size))


def _copy_tokenizer_fields(writer, path: str | Path) -> None:
    """Copy every `tokenizer.*` key of an existing GGUF file (e.g. the bundled SmolLM2)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    adders = {
        gguf.GGUFValueType.STRING: writer.add_string, gguf.GGUFValueType.BOOL: writer.add_bool,
        gguf.GGUFValueType.UINT32: writer.add_uint32, gguf.GGUFValueType.INT32: writer.add_int32,
        gguf.GGUFValueType.FLOAT32: writer.add_float32, gguf.GGUFValueType.UINT64: writer.add_uint64,
    }
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, list(field.contents()))
        elif kind in adders:
            adders[kind](key, field.contents())


def _write_hf_tokenizer(writer, tokenizer) -> None:
    """A Hugging Face byte-level BPE tokenizer as llama.cpp's `gpt2` tokenizer model."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError("GGUF export: only byte-level BPE tokenizers can be written; pass "
                         "tokenizer_gguf=<a .gguf file> to copy a tokenizer from an existing GGUF")
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    for tok, i in vocab.items():
        tokens[i] = tok
    special = set(getattr(tokenizer, "all_special_ids", []))
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for attr, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("pad_token_id", writer.add_pad_token_id), ("unk_token_id", writer.add_unk_token_id)):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            add(int(value))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)


def export_gguf(model, path: str | Path, *, tokenizer=None, tokenizer_gguf: str | Path | None = None,
                qtype: str = "f16", name: str | None = None) -> dict:
    """Write `model` (a Llama-family `*ForCausalLM`) to the GGUF file `path`.

    Args:
        model: a dense decoder (merge sparse diffs and quantizers back to dense weights first).
        path: the `.gguf` file to write (its folder is created; the file is written atomically).
        tokenizer: a Hugging Face tokenizer to embed (byte-level BPE), unless `tokenizer_gguf`.
        tokenizer_gguf: a GGUF file whose `tokenizer.*` metadata is copied verbatim.
        qtype: 'f32', 'f16', 'bf16', 'q8_0' or 'q4_0'.
        name: `general.name` (default: the config's `_name_or_path`).

    Returns: {'path', 'bytes', 'tensors', 'tensor_types': {type: count}, 'f16_fallbacks'}.
    """
    import gguf

    if qtype not in QTYPES:
        raise ValueError(f"GGUF export: unknown qtype {qtype!r}; valid: {', '.join(QTYPES)}")
    config = model.config
    arch = ARCHES.get(getattr(config, "model_type", None))
    if arch is None:
        raise ValueError(f"GGUF export supports model types {sorted(ARCHES)}; got {config.model_type!r}")
    path = Path(path)
    if path.suffix != ".gguf":
        raise ValueError(f"GGUF export: {path} must end in .gguf")
    if tokenizer is None and tokenizer_gguf is None:
        raise ValueError("GGUF export needs a tokenizer (tokenizer=...) or tokenizer_gguf=<file.gguf>")
    names = _hf_to_gguf_names(model)
    state = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    n_head = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_head)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_name(name or str(getattr(config, "_name_or_path", "") or "sparseft-model"))
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                          "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype])
    _write_config(writer, config, arch)
    if tokenizer_gguf is not None:
        _copy_tokenizer_fields(writer, tokenizer_gguf)
    else:
        _write_hf_tokenizer(writer, tokenizer)

    counts: dict[str, int] = {}
    fallbacks = 0
    for hf_name, tensor in state.items():
        if tied and hf_name == "lm_head.weight":
            continue  # GGUF marks tied embeddings by leaving output.weight out
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gname = names.get(hf_name)
        if gname is None:
            raise ValueError(f"GGUF export: no GGUF name for tensor {hf_name!r} (is the model dense? merge "
                             f"sparse diffs / quantized layers first)")
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if gname.endswith("attn_q.weight"):
            array = _permute(array, n_head, n_head)
        elif gname.endswith("attn_k.weight"):
            array = _permute(array, n_head, n_kv)
        ttype = _tensor_type(gname, array, qtype)
        if qtype in ("q8_0", "q4_0") and array.ndim == 2 and ttype == gguf.GGMLQuantizationType.F16:
            fallbacks += 1
        if ttype == gguf.GGMLQuantizationType.F32:
            data = np.ascontiguousarray(array, dtype=np.float32)
        elif ttype == gguf.GGMLQuantizationType.F16:
            data = np.ascontiguousarray(array, dtype=np.float16)
        else:
            data = gguf.quants.quantize(np.ascontiguousarray(array), ttype)
        writer.add_tensor(gname, data, raw_dtype=ttype)
        counts[ttype.name] = counts.get(ttype.name, 0) + 1

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return {"path": str(path), "bytes": path.stat().st_size, "tensors": sum(counts.values()),
            "tensor_types": counts, "f16_fallbacks": fallbacks}

"""How a compressed checkpoint folder is laid out, so that every loader gets it right.

`export_compressed(model, dir, layout=...)` (export/compressed.py) picks one of:

  "compressed-tensors"  quantized layers in compressed-tensors' pack-quantized format, every
                        other tensor dense (export/compressed_tensors.py). config.json carries a
                        compressed-tensors `quantization_config`: plain transformers with the
                        `compressed-tensors` package loads it, no sparseft needed.
  "sparseft"            sparseft's own encoding (bitmask storage, codebooks, outliers, dynamic
                        int8, asymmetric grids). config.json carries
                        {"quant_method": "sparseft", "layout": "compressed"}: after
                        `import sparseft`, `from_pretrained` refuses it with a message naming
                        `sparseft.load`; plain transformers skips the unknown method but then
                        stops on the empty guard tensors written under every encoded tensor's
                        model name (a size mismatch), instead of loading random weights.
  "plain"               nothing is encoded (no quantized layer, no bitmask tensor): an ordinary
                        folder every loader reads.

"auto" (the default) takes compressed-tensors when it can express the model, the package is
installed and no tensor is stored as a bitmask, "plain" when nothing is encoded, else "sparseft".
In every layout `compression_config.json` describes the logical tensors for `load_compressed`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sparseft.export import compressed_tensors as ct
from sparseft.utils.swaps import FORMAT_VERSION, GUARD, QUANT_METHOD

LAYOUTS = ("auto", "compressed-tensors", "sparseft")


def check_exportable(model: torch.nn.Module, known: tuple[type, ...]) -> None:
    """Refuse swapped modules the compressed writer cannot store (they would not load back)."""
    from sparseft.utils.swaps import swapped_modules

    for fqn, spec in swapped_modules(model).items():
        if not isinstance(model.get_submodule(fqn), known):
            hint = ("merge the sparse fine-tuning wrappers first (merge_sparse_)" if spec["type"] == "SparseDelta"
                    else "save it with save_pretrained instead (it loads after `import sparseft`)")
            raise ValueError(f"the compressed export cannot store {spec['type']} layers yet ({fqn}); {hint}")


def choose_layout(model: torch.nn.Module, layout: str, entries: dict[str, dict], modules: dict) -> str:
    """'compressed-tensors', 'sparseft' or 'plain' for this model and the writer's tensor entries."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    bitmask = sorted(n for n, e in entries.items() if e["format"] == "sparse-bitmask")
    if layout == "compressed-tensors":
        reason = ct.why_not_expressible(model)
        if bitmask:
            reason = f"{len(bitmask)} tensors are stored as bitmasks (e.g. {bitmask[0]}); export with sparse='never'"
        elif reason is None and not ct.available():
            reason = "the compressed-tensors package is not installed (pip install compressed-tensors)"
        if reason is not None:
            raise ValueError(f"layout 'compressed-tensors' cannot express this model: {reason}")
        return "compressed-tensors"
    if not modules and not bitmask:
        return "plain"
    if layout == "auto" and not bitmask and ct.available() and ct.why_not_expressible(model) is None:
        return "compressed-tensors"
    return "sparseft"


def layout_tensors(model: torch.nn.Module, chosen: str, tensors: dict[str, torch.Tensor],
                   entries: dict[str, dict], modules: dict) -> dict[str, torch.Tensor]:
    """The tensors to write for `chosen`, from the writer's sparseft-encoded `tensors`."""
    prefixes = tuple(f"{fqn}." for fqn in modules)
    if chosen == "compressed-tensors":
        out = {n: t for n, t in tensors.items() if not n.startswith(prefixes)}
        for fqn in modules:
            out.update(ct.layer_tensors(fqn, model.get_submodule(fqn)))
        return out
    out = dict(tensors)
    if chosen == "sparseft":
        guards = {f"{fqn}.{GUARD}" for fqn in modules}
        guards |= {n for n, e in entries.items() if e["format"] == "sparse-bitmask" and not n.startswith(prefixes)}
        for name in guards - set(out):
            out[name] = torch.empty(0, dtype=torch.uint8)
    return out


def layout_quant_config(model: torch.nn.Module, chosen: str) -> dict | None:
    if chosen == "compressed-tensors":
        return ct.quantization_config(model)
    if chosen == "sparseft":
        return {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "layout": "compressed"}
    return None


def write_model_config(model: torch.nn.Module, directory: Path, quant_config: dict | None) -> None:
    """config.json of `model` with `quant_config` as its quantization_config (or none)."""
    model.config.save_pretrained(directory)
    path = Path(directory) / "config.json"
    data = json.loads(path.read_text())
    data.pop("quantization_config", None)  # e.g. the in-memory "modules" record of utils/swaps.py
    if quant_config is not None:
        data["quantization_config"] = quant_config
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

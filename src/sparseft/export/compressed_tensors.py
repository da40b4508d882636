"""Write quantized layers in the compressed-tensors `pack-quantized` format, and read them back.

`export_compressed(..., layout="auto")` (export/compressed.py) uses this format when it can
express the whole model, so the folder loads with plain transformers plus the
`compressed-tensors` package (no sparseft), and in vLLM:

    AutoModelForTokenClassification.from_pretrained("out/minilm-int4")   # pip install compressed-tensors

Expressible ("W4A16" / "W8A16" style): `QuantLinear` layers with a symmetric uniform grid (RTN,
GPTQ), per-tensor, per-channel or per-group scales with groups that divide the row, no fp32
outliers and no codebook; every other tensor stored dense. Not expressible, so written in
sparseft's own layout: NF4 / k-means codebooks, outliers, asymmetric grids (compressed-tensors
0.20 packs zero points on save but expects them unpacked on load), quantized embeddings, dynamic
int8 (the activation quantizer differs) and bitmask-stored tensors (compressed-tensors 0.20 no
longer loads `sparse-bitmask`).

Per quantized layer the file holds compressed-tensors' names: `<fqn>.weight_packed` (int32,
32 / bits signed codes per word, `pack_to_int32`), `<fqn>.weight_scale` (f32 [out, 1] channel,
[out, groups] group, [1] tensor), `<fqn>.weight_shape` and `<fqn>.bias`. sparseft codes are
unsigned with zero at 2^(bits-1), compressed-tensors' are signed with zero point 0: the same grid.
`compression_config.json` still describes the logical tensors, so `load_compressed` rebuilds the
exact `QuantLinear` layers (`to_sparseft_tensors`).
"""

from __future__ import annotations

import torch

CT_METHOD = "compressed-tensors"
CT_FORMAT = "pack-quantized"


def available() -> bool:
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        return False
    return True


def _strategy(module) -> tuple[str, int | None] | None:
    """('tensor'|'channel'|'group', group_size) when compressed-tensors can express `module`'s scales."""
    scale = module.scale
    if scale is None:
        return None
    if tuple(scale.shape) == (1, 1):
        return "tensor", None
    if scale.shape[1] == 1:
        return "channel", None
    if module.in_features % module.group_size == 0 and scale.shape[1] == module.in_features // module.group_size:
        return "group", module.group_size
    return None


def why_not_expressible(model: torch.nn.Module) -> str | None:
    """None when every swapped layer of `model` fits pack-quantized, else the first reason."""
    from sparseft.compress.quantize.layers import QuantLinear
    from sparseft.utils.swaps import swapped_modules

    found = False
    for fqn, spec in swapped_modules(model).items():
        module = model.get_submodule(fqn)
        if type(module) is not QuantLinear:
            return f"{fqn} is a {spec['type']}"
        if module.codebook is not None or module.outlier_index is not None:
            return f"{fqn} uses a codebook or fp32 outliers"
        if not module.symmetric:
            return f"{fqn} has an asymmetric grid"
        if not 2 <= module.bits <= 8 or _strategy(module) is None:
            return f"{fqn}: {module.bits}-bit codes with group_size {module.group_size} have no pack-quantized scheme"
        found = True
    return None if found else "nothing is quantized"


def quantization_config(model: torch.nn.Module) -> dict:
    """The config.json `quantization_config` for the quantized layers of `model`."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    from sparseft.utils.swaps import swapped_modules

    groups: dict[tuple, list[str]] = {}
    for fqn in swapped_modules(model):
        module = model.get_submodule(fqn)
        strategy, group_size = _strategy(module)
        groups.setdefault((module.bits, strategy, group_size), []).append(fqn)
    config_groups = {}
    for i, ((bits, strategy, group_size), fqns) in enumerate(sorted(groups.items(), key=str)):
        args = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy=strategy, group_size=group_size)
        targets = ["re:^" + fqn.replace(".", r"\.") + "$" for fqn in fqns]
        config_groups[f"group_{i}"] = QuantizationScheme(targets=targets, weights=args)
    qc = QuantizationConfig(config_groups=config_groups, format=CT_FORMAT, quantization_status="compressed",
                            ignore=[])
    return {"quant_method": CT_METHOD, **qc.model_dump(mode="json")}


def layer_tensors(fqn: str, module) -> dict[str, torch.Tensor]:
    """compressed-tensors tensors of one symmetric QuantLinear (see module docstring)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    offset = 2 ** (module.bits - 1)
    signed = (module.codes().to(torch.int16) - offset).to(torch.int8)            # [out, in]
    strategy, _ = _strategy(module)
    scale = module.scale.float()
    scale = scale.reshape(1) if strategy == "tensor" else scale                   # [1] | [out, 1] | [out, G]
    out = {f"{fqn}.weight_packed": pack_to_int32(signed, module.bits).contiguous(),
           f"{fqn}.weight_scale": scale.contiguous(),
           f"{fqn}.weight_shape": torch.tensor([module.out_features, module.in_features])}
    if module.bias is not None:
        out[f"{fqn}.bias"] = module.bias.detach().float().contiguous()
    return out


def to_sparseft_tensors(stored: dict[str, torch.Tensor], meta: dict) -> dict[str, torch.Tensor]:
    """Turn a compressed-tensors file's tensors into what sparseft's dense layout stores."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    from sparseft.compress.quantize.pack import pack_codes, storage_bits

    stored = dict(stored)
    for fqn, entry in meta["modules"].items():
        bits = entry["bits"]
        rows, cols = entry["out_features"], entry["in_features"]
        signed = unpack_from_int32(stored.pop(f"{fqn}.weight_packed"), bits, torch.Size([rows, cols]))
        codes = (signed.to(torch.int16) + 2 ** (bits - 1)).to(torch.uint8)
        stored[f"{fqn}.weight_packed"] = pack_codes(codes, storage_bits(bits))
        shape = meta["tensors"][f"{fqn}.weight_scale"]["shape"]
        stored[f"{fqn}.weight_scale"] = stored[f"{fqn}.weight_scale"].reshape(shape)
        stored.pop(f"{fqn}.weight_shape", None)
    return stored

"""Checks that a sparse diff is what it claims to be, before it touches a model.

    check_entries(indices, values, shapes, base_values, dense)   # in memory: counts, ranges, NaN
    check_manifest(manifest, indices, dense)                     # on load: manifest vs. tensors
    tensors_checksum(stored)                                     # sha256 of the stored tensors

Every problem raises ValueError (`sparse_diff.load_diff` prefixes the file name), never an
IndexError from `index_add_` and never a silent write of NaN or of a wrong position:
  - each sparse tensor has as many values (and base values) as indices, all finite;
  - indices are integers in [0, numel(shape)) with no duplicates (`index_add_` would add twice);
  - dense tensors are finite;
  - the manifest lists exactly the stored tensors, with their counts and shapes, and its total
    `count` is the sum;
  - `checksum` (sha256 over name, dtype, shape and bytes of every stored tensor, in name order)
    matches. Diffs written before the checksum existed load without that check (a warning says
    so); the other checks still run.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Mapping

import torch

from sparseft.export.fingerprint import tensor_bytes


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """'sha256:<hex>' over the stored tensors (keys sorted), as written to diff.safetensors."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}\n".encode())
        h.update(tensor_bytes(t))
    return "sha256:" + h.hexdigest()


def _not_finite(t: torch.Tensor) -> int:
    return int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0


def check_entries(indices: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor],
                  shapes: Mapping[str, tuple], base_values: Mapping[str, torch.Tensor],
                  dense: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError on inconsistent counts, bad indices or non-finite numbers (module doc)."""
    orphans = sorted((set(values) | set(base_values)) - set(indices))
    if orphans:
        raise ValueError(f"values without indices for {orphans[:5]}")
    for name, idx in indices.items():
        if name not in values or name not in shapes:
            raise ValueError(f"{name}: indices without values or shape")
        k = idx.numel()
        if values[name].numel() != k:
            raise ValueError(f"{name}: {k} indices but {values[name].numel()} values")
        if name in base_values and base_values[name].numel() != k:
            raise ValueError(f"{name}: {k} indices but {base_values[name].numel()} base values")
        if idx.is_floating_point() or idx.dtype == torch.bool:
            raise ValueError(f"{name}: indices must be integers, got {idx.dtype}")
        numel = int(torch.Size(shapes[name]).numel())
        if k:
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= numel:
                raise ValueError(f"{name}: index {lo if lo < 0 else hi} is out of range for shape "
                                 f"{tuple(shapes[name])} ({numel} entries)")
            flat = idx.reshape(-1).sort().values
            dups = int((flat[1:] == flat[:-1]).sum())
            if dups:
                raise ValueError(f"{name}: {dups} duplicate indices")
        for what, t in (("values", values[name]), ("base values", base_values.get(name))):
            bad = _not_finite(t) if t is not None else 0
            if bad:
                raise ValueError(f"{name}: {bad} of {k} {what} are NaN or infinite")
    for name, t in dense.items():
        bad = _not_finite(t)
        if bad:
            raise ValueError(f"{name}: {bad} entries of the dense tensor are NaN or infinite")


def check_manifest(manifest: dict, indices: Mapping[str, torch.Tensor], dense: Mapping[str, torch.Tensor]) -> None:
    """The manifest must describe exactly the stored tensors (raise ValueError otherwise)."""
    listed = manifest.get("tensors")
    if not isinstance(listed, dict):
        raise ValueError("manifest has no 'tensors' mapping")
    missing, extra = sorted(set(listed) - set(indices)), sorted(set(indices) - set(listed))
    if missing or extra:
        raise ValueError(f"manifest and tensors disagree: listed but not stored {missing[:5]}, "
                         f"stored but not listed {extra[:5]}")
    for name, entry in listed.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
            raise ValueError(f"manifest entry for {name} has no shape")
        if "count" in entry and int(entry["count"]) != indices[name].numel():
            raise ValueError(f"{name}: the manifest says {entry['count']} entries, the file stores "
                             f"{indices[name].numel()}")
    total = sum(int(i.numel()) for i in indices.values())
    if "count" in manifest and int(manifest["count"]) != total:
        raise ValueError(f"the manifest's count is {manifest['count']}, the file stores {total} entries")
    listed_dense = manifest.get("dense") or {}
    if set(listed_dense) != set(dense):
        raise ValueError(f"manifest and dense tensors disagree: listed {sorted(listed_dense)[:5]}, "
                         f"stored {sorted(dense)[:5]}")
    for name, entry in listed_dense.items():
        if list(entry.get("shape", [])) != list(dense[name].shape):
            raise ValueError(f"{name}: the manifest says shape {entry.get('shape')}, the stored dense "
                             f"tensor has {list(dense[name].shape)}")


def check_checksum(manifest: dict, stored: Mapping[str, torch.Tensor], where: str) -> None:
    """Compare the manifest's checksum with the stored tensors (a warning if it has none)."""
    expected = manifest.get("checksum")
    if expected is None:
        warnings.warn(f"{where}: the manifest has no checksum (written by an older sparseft); the file's "
                      f"integrity is not verified (the other checks still ran)", UserWarning, stacklevel=3)
        return
    actual = tensors_checksum(stored)
    if actual != expected:
        raise ValueError(f"checksum mismatch ({actual[:19]}... stored, {str(expected)[:19]}... in the "
                         f"manifest): the file was changed or corrupted after it was written")

"""Sparse diffs: what a sparse fine-tuning changed, as values plus positions, keyed by parameter.

A diff folder holds two files:

    diff.safetensors   per sparse tensor NAME:  NAME::indices  flat positions (int32 on disk when
                                                               they fit, int64 otherwise; int64 in memory)
                                                NAME::values   deltas (fp32)
                                                NAME::base     W0 at those positions (exact revert)
                       per dense tensor NAME:   NAME::dense    the whole tensor (new task heads)
    manifest.json      format + version, sparseft version, base model id, base fingerprint (and
                       the tensors it covers), method config, task + labels, density, count and
                       per-tensor shape / count.

Applying (`apply_diff_`) adds `scale * values` at the positions (`index_add_`: every other entry
keeps its exact bits) and copies dense tensors. Before that it checks the base: the model must
have the manifest's fingerprint, or, failing that (another disjoint diff already applied, or a
bf16 copy of the base), hold exactly the stored base values at every position this diff
changes. Otherwise it refuses with a message; `force=True` (`--force`) overrides.

Revert writes the stored base values back (bit-exact W0 at the diff's positions); dense heads
are left as they are (they are not part of the base). It first checks that the model holds
base + delta at those positions (`check_applied`), so one model's W0 is never written into
another. When diffs overlap and were applied one after the other, that check fails at the shared
positions; `force=True` reverts anyway and restores W0 there.

Loading checks the files (export/diff_validate.py): counts against the manifest, a sha256
checksum of the stored tensors (diffs from before the checksum load with a warning), index
ranges, duplicates and NaN / inf; truncated or corrupt files give one error naming the file.

Compose policies for positions present in several diffs (`compose(diffs, policy=...)`):
    "sum"    (default) deltas add up: the same as applying the diffs one after the other;
    "error"  refuse overlapping positions (checks that diffs are disjoint);
    "last"   the later diff's delta wins.
Dense tensors present in several diffs are an error unless policy="last"; drop heads first
with `diff.without_dense()` to compose the bodies of diffs trained with different heads.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import save_file

from sparseft.export.diff_card import write_diff_card
from sparseft.export.diff_validate import check_checksum, check_entries, check_manifest, tensors_checksum
from sparseft.export.fingerprint import fingerprint
from sparseft.utils.hub import resolve_folder
from sparseft.utils.io import dir_size_bytes
from sparseft.utils.outdir import replace_dir
from sparseft.utils.tensorfile import load_tensors

__all__ = ["SparseDiff", "save_diff", "load_diff", "apply_diff_", "revert_diff_", "compose", "merge",
           "diff_info", "fingerprint", "check_base", "check_applied", "POLICIES", "BaseMismatch"]

FORMAT, FORMAT_VERSION = "sparseft.sparse_diff", 1
POLICIES = ("sum", "error", "last")
_SEP = "::"


class BaseMismatch(ValueError):
    """The model is not the base the diff was trained on (apply with force=True to override)."""


@dataclass
class SparseDiff:
    """In-memory sparse diff (see module docstring).

    Attributes:
        indices: {param name: int64 [k] flat positions, sorted, unique}.
        values: {param name: fp32 [k] deltas}.
        shapes: {param name: full tensor shape}.
        base_values: {param name: [k] W0 at the positions} (empty: revert subtracts instead).
        dense: {param name: full tensor} for new heads trained densely.
        manifest: JSON-able metadata (base model, fingerprint, method config, ...).
    """

    indices: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    base_values: dict[str, torch.Tensor] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # counts, index ranges / duplicates, NaN or inf (export/diff_validate.py)
        check_entries(self.indices, self.values, self.shapes, self.base_values, self.dense)

    @property
    def count(self) -> int:
        """Number of sparse entries (dense tensors not included)."""
        return sum(int(i.numel()) for i in self.indices.values())

    @property
    def dense_count(self) -> int:
        return sum(int(t.numel()) for t in self.dense.values())

    def without_dense(self) -> "SparseDiff":
        """The same diff without its dense tensors (e.g. to compose bodies of different tasks)."""
        return replace(self, dense={}, manifest={**self.manifest, "dense": {}})

    def only(self, names) -> "SparseDiff":
        """The sparse and dense tensors whose names are in `names` (e.g. those a model has)."""
        keep = set(names)
        pick = lambda d: {n: t for n, t in d.items() if n in keep}  # noqa: E731
        return replace(self, indices=pick(self.indices), values=pick(self.values), shapes=pick(self.shapes),
                       base_values=pick(self.base_values), dense=pick(self.dense), manifest=dict(self.manifest))

    def dense_only(self) -> "SparseDiff":
        """Only the dense tensors (a task's head), no sparse entries."""
        return replace(self, indices={}, values={}, shapes={}, base_values={},
                       manifest={**self.manifest, "tensors": {}})

    def summary(self) -> dict:
        return {"count": self.count, "dense_count": self.dense_count, "tensors": len(self.indices),
                "dense_tensors": sorted(self.dense)}


# ---- files ---------------------------------------------------------------------------------

def save_diff(diff: SparseDiff, directory: str | Path, *, overwrite: bool = False, owner: str | None = None) -> Path:
    """Write `diff.safetensors` + `manifest.json` into `directory` (replaced atomically).

    A non-empty folder sparseft did not write is refused unless `overwrite` (see
    `sparseft.utils.outdir`, which also explains `owner`). The folder also gets a README.md
    model card (export/diff_card.py).

    Example:
        >>> save_diff(diff, "runs/sft/diff")                                         # doctest: +SKIP
    """
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {}
    for name, idx in diff.indices.items():
        small = diff.shapes[name] and torch.Size(diff.shapes[name]).numel() < 2**31
        tensors[f"{name}{_SEP}indices"] = idx.to(torch.int32 if small else torch.int64).contiguous().cpu()
        tensors[f"{name}{_SEP}values"] = diff.values[name].contiguous().cpu()
        if name in diff.base_values:
            tensors[f"{name}{_SEP}base"] = diff.base_values[name].contiguous().cpu()
        meta[name] = {"shape": list(diff.shapes[name]), "count": int(idx.numel()),
                      "dtype": str(diff.values[name].dtype).removeprefix("torch.")}
    for name, t in diff.dense.items():
        tensors[f"{name}{_SEP}dense"] = t.detach().contiguous().cpu().clone()
    manifest = {**diff.manifest, "format": FORMAT, "format_version": FORMAT_VERSION, "tensors": meta,
                "dense": {n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                          for n, t in diff.dense.items()},
                "count": diff.count}
    manifest["checksum"] = tensors_checksum(tensors)  # verified by load_diff
    manifest.setdefault("sparseft_version", _version())
    manifest.setdefault("created", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    with replace_dir(directory, owner=owner, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / "diff.safetensors"), metadata={"format": FORMAT})
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        write_diff_card(tmp, manifest, load_path=str(directory))
    return Path(directory)


def load_diff(directory: str | Path, *, revision: str | None = None) -> SparseDiff:
    """Read a diff folder written by `save_diff` (indices come back as int64).

    The tensors are checked against the manifest and its checksum, and for NaN / out-of-range
    indices (export/diff_validate.py); any problem is a ValueError naming the file.
    `directory` may also be a Hub repo id ("user/diff", at `revision`), fetched with
    huggingface_hub (from the local cache only under HF_HUB_OFFLINE=1; utils/hub.py).

    Example:
        >>> diff = load_diff("runs/sft/diff")                                        # doctest: +SKIP
        >>> diff = load_diff("me/minilm-conll-sft", revision="main")                 # doctest: +SKIP
    """
    directory = resolve_folder(directory, revision=revision)
    manifest = _read_manifest(directory)
    path = directory / "diff.safetensors"
    raw = load_tensors(path)
    try:
        return _from_stored(raw, manifest, path)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _from_stored(raw: dict[str, torch.Tensor], manifest: dict, path: Path) -> SparseDiff:
    indices, values, base, dense, shapes = {}, {}, {}, {}, {}
    for key, t in raw.items():
        name, _, kind = key.rpartition(_SEP)
        if kind == "indices":
            indices[name] = t.long()
        elif kind == "values":
            values[name] = t
        elif kind == "base":
            base[name] = t
        elif kind == "dense":
            dense[name] = t
        else:
            raise ValueError(f"unexpected tensor {key!r}")
    check_manifest(manifest, indices, dense)
    check_checksum(manifest, raw, str(path))
    for name in indices:
        shapes[name] = tuple(manifest["tensors"][name]["shape"])
    return SparseDiff(indices, values, shapes, base, dense, manifest)


def _read_manifest(directory: Path) -> dict:
    path = directory / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a sparse diff folder (no manifest.json)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); the file is truncated or corrupt") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a sparseft sparse diff (format {manifest.get('format')!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: format version {manifest['format_version']} is newer than this "
                         f"sparseft understands ({FORMAT_VERSION}); upgrade sparseft")
    return manifest


def diff_info(directory: str | Path) -> dict:
    """Manifest summary plus sizes on disk, without loading the tensors (a hub id works too)."""
    directory = resolve_folder(directory)
    m = _read_manifest(directory)
    total = sum(int(torch.Size(t["shape"]).numel()) for t in m["tensors"].values())
    return {"path": str(directory), "base_model": m.get("base_model"), "base_revision": m.get("base_revision"),
            "base_fingerprint": m.get("base_fingerprint"),
            "method": (m.get("method") or {}).get("_type", m.get("method")), "task": m.get("task"),
            "count": m.get("count"), "density": m.get("density"),
            "density_of_tensors_in_diff": m.get("count", 0) / total if total else 0.0,
            "tensors": len(m["tensors"]), "dense": sorted(m.get("dense", {})),
            "size_bytes": dir_size_bytes(directory), "sparseft_version": m.get("sparseft_version"),
            "created": m.get("created")}


# ---- apply / revert ------------------------------------------------------------------------

def _params(model: torch.nn.Module, diff: SparseDiff) -> dict[str, torch.Tensor]:
    from sparseft.sft.layer import sparse_layers

    if sparse_layers(model):
        raise ValueError("the model is still sparsified for training; merge it first (merge_sparse_)")
    params = dict(model.named_parameters())
    missing = sorted(n for n in [*diff.indices, *diff.dense] if n not in params)
    if missing:
        raise ValueError(f"the model has no parameter(s) {missing[:5]} that the diff changes "
                         f"(wrong model, or a task model with another head?)")
    for name, shape in diff.shapes.items():
        if tuple(params[name].shape) != tuple(shape):
            raise ValueError(f"{name}: the diff expects shape {tuple(shape)}, the model has {tuple(params[name].shape)}")
    for name, t in diff.dense.items():
        if params[name].shape != t.shape:
            raise ValueError(f"{name}: the diff's dense tensor has shape {tuple(t.shape)}, the model "
                             f"{tuple(params[name].shape)} (load the model with the diff's labels)")
    return params


def check_base(model: torch.nn.Module, diff: SparseDiff) -> str:
    """Return how the base was recognised ('fingerprint' or 'base values'); raise BaseMismatch."""
    expected = diff.manifest.get("base_fingerprint")
    names = diff.manifest.get("fingerprint_tensors") or sorted(diff.indices)
    params = _params(model, diff)
    if not diff.indices:
        return "nothing to check (dense tensors only)"
    if expected and all(n in params for n in names) and fingerprint(model, names) == expected:
        return "fingerprint"
    has_base = bool(diff.indices) and all(n in diff.base_values for n in diff.indices)
    if has_base and all(
            torch.equal(params[n].detach().reshape(-1)[diff.indices[n].to(params[n].device)],
                        diff.base_values[n].to(device=params[n].device, dtype=params[n].dtype))
            for n in diff.indices):
        return "base values"
    if not expected and not has_base:
        return "unchecked (the diff stores no fingerprint and no base values)"
    raise BaseMismatch(
        f"this diff was trained on base {diff.manifest.get('base_model') or '(unnamed)'} "
        f"({(expected or 'no fingerprint')[:19]}...), but the model's weights differ from that base at the positions the "
        f"diff changes. Apply it to the base it was trained on; to apply several diffs, compose them "
        f"first (compose / `sparseft diff compose`). Override with force=True (CLI: --force) if you "
        f"know what you are doing.")


@torch.no_grad()
def apply_diff_(model: torch.nn.Module, diff: SparseDiff, scale: float = 1.0, *, force: bool = False) -> None:
    """W[idx] += scale * values for every sparse tensor; copy dense tensors. In place.

    Args:
        scale: multiplies the sparse deltas (dense tensors are copied as they are).
        force: skip the base check (see `check_base`).

    Example:
        >>> apply_diff_(model, load_diff("runs/sft/diff"))   # doctest: +SKIP
    """
    params = _params(model, diff)
    if not force:
        check_base(model, diff)
    for name, idx in diff.indices.items():
        p = params[name]
        delta = diff.values[name] if scale == 1.0 else diff.values[name] * scale
        p.view(-1).index_add_(0, idx.to(p.device), delta.to(device=p.device, dtype=p.dtype))
    for name, t in diff.dense.items():
        params[name].copy_(t)


def check_applied(model: torch.nn.Module, diff: SparseDiff) -> str:
    """Revert's base check: the model must hold base + delta at the diff's positions.

    Returns how it was checked; raises BaseMismatch for a model the diff was not applied to
    (reverting would write this diff's W0 into another model). Diffs without base values cannot
    be checked. Tolerance: a few ulps of the parameter dtype (training vs. apply rounding).
    """
    params = _params(model, diff)
    if not diff.indices:
        return "nothing to check (dense tensors only)"
    if not all(n in diff.base_values for n in diff.indices):
        return "unchecked (the diff stores no base values)"
    for name, idx in diff.indices.items():
        p = params[name].detach()
        have = p.reshape(-1)[idx.to(p.device)].float()
        base = diff.base_values[name].to(device=p.device, dtype=p.dtype).float()
        want = (base.to(p.dtype) + diff.values[name].to(device=p.device, dtype=p.dtype)).float()
        tol = 4 * torch.finfo(p.dtype).eps * (want.abs() + base.abs()) + 1e-30
        bad = int(((have - want).abs() > tol).sum())
        if bad:
            raise BaseMismatch(
                f"{name}: at {bad} of {idx.numel()} positions the model does not hold base + this diff's "
                f"delta, so this diff was not applied to it (or other diffs changed the same positions); "
                f"reverting would write the diff's base weights into another model. Override with "
                f"force=True (CLI: --force) if you know what you are doing.")
    return "base + delta"


@torch.no_grad()
def revert_diff_(model: torch.nn.Module, diff: SparseDiff, *, force: bool = False) -> None:
    """Undo `apply_diff_` on the sparse tensors (bit-exact W0 when the diff stores base values).

    Args:
        force: skip the check that the diff was applied to `model` (see `check_applied`).

    Example:
        >>> revert_diff_(model, diff)   # W0 again at the diff's positions            # doctest: +SKIP
    """
    params = _params(model, diff)
    if not force:
        check_applied(model, diff)
    for name, idx in diff.indices.items():
        p = params[name]
        idx = idx.to(p.device)
        if name in diff.base_values:
            p.view(-1)[idx] = diff.base_values[name].to(device=p.device, dtype=p.dtype)
        else:  # older/foreign diffs without base values: subtract (exact only up to rounding)
            p.view(-1).index_add_(0, idx, -diff.values[name].to(device=p.device, dtype=p.dtype))


# ---- compose / merge -------------------------------------------------------------------------

def compose(diffs: Sequence[SparseDiff], policy: str = "sum", *, scales: Sequence[float] | None = None,
            force: bool = False) -> SparseDiff:
    """One diff equivalent to several (see module docstring for the overlap policies).

    Args:
        diffs: diffs trained on the same base (same fingerprint unless `force`).
        policy: "sum", "error" or "last" for positions present in several diffs.
        scales: optional per-diff factors on the deltas (default 1.0 each).

    Example:
        >>> both = compose([load_diff("runs/a/diff"), load_diff("runs/b/diff")], policy="error")  # doctest: +SKIP
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if not diffs:
        raise ValueError("compose needs at least one diff")
    scales = list(scales) if scales is not None else [1.0] * len(diffs)
    if len(scales) != len(diffs):
        raise ValueError(f"{len(scales)} scales for {len(diffs)} diffs")
    by_tensors: dict[str, set] = {}  # fingerprints are comparable only over the same tensor set
    for d in diffs:
        if d.manifest.get("base_fingerprint"):
            key = json.dumps(sorted(d.manifest.get("fingerprint_tensors") or d.indices))
            by_tensors.setdefault(key, set()).add(d.manifest["base_fingerprint"])
    if any(len(fps) > 1 for fps in by_tensors.values()) and not force:
        raise BaseMismatch("the diffs were trained on different bases (fingerprints differ); "
                           "pass force=True (--force) to compose them anyway")
    indices, values, base, shapes, dense = {}, {}, {}, {}, {}
    names = list(dict.fromkeys(n for d in diffs for n in d.indices))
    for name in names:
        parts = [(d, s) for d, s in zip(diffs, scales) if name in d.indices]
        shapes[name] = parts[0][0].shapes[name]
        if any(tuple(d.shapes[name]) != tuple(shapes[name]) for d, _ in parts):
            raise ValueError(f"{name}: the diffs disagree on its shape")
        idx = torch.cat([d.indices[name].cpu() for d, _ in parts])
        val = torch.cat([d.values[name].cpu().float() * s for d, s in parts])
        uniq, inverse = torch.unique(idx, sorted=True, return_inverse=True)
        if policy == "error" and uniq.numel() < idx.numel():
            raise ValueError(f"{name}: the diffs overlap at {idx.numel() - uniq.numel()} positions (policy='error')")
        if policy == "last":  # for each position, the entry that comes last in diff order
            last = torch.full((uniq.numel(),), -1, dtype=torch.long).scatter_reduce(
                0, inverse, torch.arange(idx.numel()), "amax")
            out = val[last]
        else:
            out = torch.zeros(uniq.numel(), dtype=torch.float32).index_add_(0, inverse, val)
        indices[name], values[name] = uniq, out
        if all(name in d.base_values for d, _ in parts):
            b = torch.cat([d.base_values[name].cpu() for d, _ in parts])
            base[name] = torch.zeros(uniq.numel(), dtype=b.dtype).scatter_(0, inverse, b)
    for d in diffs:
        for name, t in d.dense.items():
            if name in dense and policy != "last":
                raise ValueError(f"dense tensor {name!r} is in several diffs; compose the bodies with "
                                 f"diff.without_dense(), or use policy='last'")
            dense[name] = t
    first = diffs[0].manifest
    manifest = {k: first[k] for k in ("base_model", "base_fingerprint", "fingerprint_tensors") if k in first}
    one_fingerprint = (all(d.manifest.get("base_fingerprint") for d in diffs) and len(by_tensors) == 1
                       and len(next(iter(by_tensors.values()))) == 1)
    if not one_fingerprint:
        # fingerprints over different tensor sets cannot be combined; the base-value check remains
        manifest.pop("base_fingerprint", None)
        manifest.pop("fingerprint_tensors", None)
    manifest.update({"method": {"_type": "compose", "policy": policy, "scales": scales},
                     "components": [{k: d.manifest.get(k) for k in ("method", "task", "count", "density")}
                                    for d in diffs],
                     "task": first.get("task") if len({d.manifest.get("task") for d in diffs}) == 1 else None})
    if len({json.dumps(d.manifest.get("labels")) for d in diffs}) == 1 and "labels" in first:
        manifest["labels"] = first["labels"]
    return SparseDiff(indices, values, shapes, base, dense, manifest)


def merge(model: torch.nn.Module, diffs: SparseDiff | Sequence[SparseDiff], directory: str | Path, *,
          tokenizer=None, policy: str = "sum", scale: float = 1.0, force: bool = False,
          overwrite: bool = False, owner: str | None = None) -> Path:
    """Apply (composed) diffs to `model` in place and write a dense `save_pretrained` folder.

    The folder also holds `sparseft_diff.json`, the manifest of what was merged. `overwrite` /
    `owner`: see `save_artifact`.

    Example:
        >>> merge(base, load_diff("runs/sft/diff"), "runs/sft/merged", tokenizer=tok)  # doctest: +SKIP
    """
    from sparseft.export.save import save_artifact

    diff = diffs if isinstance(diffs, SparseDiff) else (
        diffs[0] if len(diffs) == 1 else compose(diffs, policy, force=force))
    apply_diff_(model, diff, scale, force=force)
    manifest = {k: v for k, v in diff.manifest.items() if k not in ("tensors",)}
    return save_artifact(model, tokenizer, directory, configs={"diff": {**manifest, "scale": scale}},
                         overwrite=overwrite, owner=owner)


def _version() -> str:
    from sparseft import __version__

    return __version__

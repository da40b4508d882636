"""Read what runs produced: comparison points, training curves, per-layer series, size breakdowns.

Everything here reads plain files (metrics.json, log.jsonl, safetensors headers, diff manifests)
and returns plain Python data for `report.plots` and `report.compare`; nothing imports torch.

A *point* is one evaluated model: an `eval` section of a run (a stage logged with a headline
metric: f1 for NER, accuracy for classification, perplexity or response loss for LM). Its other
columns come from the run's sections around it:
  * trainable params / train time / peak memory: the training stages before it (a stage that
    logged `train_seconds`; prune_finetune trains every remaining parameter);
  * artifact: what that model ships as - the sparse diff (`sft`) or the adapter (`lora`) when the
    last model-changing stage made one, else the `save` / `export` folder written right after the
    evaluation, else the save_pretrained size the eval stage measured;
  * latency (batch 1) / throughput (batch 32): the eval stage's `cost`.
Benchmark records (benchmarks/results/*.json) are read too: records with `stages` like a run's
metrics.json, records with `rows` one point per row that has a headline metric.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

# headline metric keys, in order of preference, and whether higher is better
HEADLINES = (("f1", True), ("accuracy", True), ("perplexity", False), ("response_loss", False))
# stages that read or write the model without changing it
PASSIVE = {"eval", "save", "export", "chat_data", "chat_eval"}
# kind of model a stage method produces (plot colours and legend groups)
KINDS = {"train": "full", "sft": "sparse", "lora": "lora", "prune": "compressed", "prune_finetune": "compressed",
         "quantize": "compressed"}
SIZE_CATEGORIES = ("embeddings", "attention", "ffn", "heads", "other")
_CATEGORY_RES = (  # first match wins; names are lower-cased tensor names
    ("heads", re.compile(r"(^|\.)(classifier|score|qa_outputs|lm_head|pooler)(\.|:|$)")),
    ("embeddings", re.compile(r"embed|(^|\.)(wte|wpe)(\.|$)")),
    ("attention", re.compile(r"attention|attn|(^|\.)(query|key|value|[qkvo]_proj)(\.|$)")),
    ("ffn", re.compile(r"intermediate|mlp|ffn|feed_forward|(gate|up|down)_proj|(^|\.)(layers?|h|blocks?)\.\d+\.output(\.|$)")),
)


@dataclass
class Point:
    """One evaluated model, a row of the comparison table."""

    label: str
    run: str
    stage: str
    kind: str
    metric_name: str
    metric: float
    higher_is_better: bool = True
    trainable_params: int | None = None
    params: int | None = None
    artifact: str | None = None          # what ships: diff / adapter / model / compressed
    artifact_path: str | None = None
    artifact_mb: float | None = None
    latency_ms_b1: float | None = None
    throughput_b32: float | None = None
    train_seconds: float | None = None
    peak_memory_mb: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunResult:
    """A run folder's metrics.json (or a benchmark record) plus where it lives."""

    name: str
    path: Path            # the run folder (or the record file's folder)
    stages: dict[str, dict]
    env: dict
    rows: list[dict] | None = None     # benchmark records with rows instead of stages


def load_run(path: str | Path, name: str | None = None) -> RunResult:
    """A run folder (with metrics.json) or a JSON file: metrics.json or a benchmark record."""
    p = Path(path)
    file = p / "metrics.json" if p.is_dir() else p
    if not file.exists():
        raise FileNotFoundError(f"{p}: no metrics.json (give a run folder or a metrics / benchmark JSON file)")
    try:
        data = json.loads(file.read_text())
    except ValueError as exc:
        raise ValueError(f"{file}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a JSON object with `stages` or `rows`")
    if p.is_dir() or p.name == "metrics.json":
        default = file.parent.name
    else:
        default = str(data.get("experiment") or p.stem)
    stages = data.get("stages")
    if isinstance(stages, dict):
        order = _stage_order(data, file.parent)
        stages = {k: stages[k] for k in sorted(stages, key=lambda k: order.index(k) if k in order else -1)}
        return RunResult(name or default, file.parent, stages, data.get("env") or {})
    if isinstance(data.get("rows"), list):
        return RunResult(name or default, file.parent, {}, data.get("env") or {}, rows=data["rows"])
    raise ValueError(f"{file}: neither `stages` (a run's metrics.json) nor `rows` (a benchmark record)")


def _stage_order(data: dict, folder: Path) -> list[str]:
    """The order the stages ran in: metrics.json's `stage_order`, else the run's recipe (its
    recipe.yaml or a benchmark record's `recipe`); sections not listed ("load") come first."""
    if isinstance(data.get("stage_order"), list):
        return [str(s) for s in data["stage_order"]]
    recipe = data.get("recipe")
    if not isinstance(recipe, dict) and (folder / "recipe.yaml").exists():
        import yaml

        try:
            recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
        except yaml.YAMLError:
            recipe = None
    stages = recipe.get("stages") if isinstance(recipe, dict) else None
    if isinstance(stages, list):
        return [str(s.get("name", s.get("method"))) for s in stages if isinstance(s, dict)]
    return list(data.get("stages") or {})


def headline(metrics: dict) -> tuple[str, float, bool] | None:
    """(key, value, higher_is_better) of the first headline metric in `metrics`, or None."""
    for key, higher in HEADLINES:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return key, float(value), higher
    return None


def _is_training(sec: dict) -> bool:
    return "train_seconds" in sec


def _changes_model(sec: dict) -> bool:
    method = sec.get("method")
    return method is not None and method not in PASSIVE


def _artifact(order: list[str], stages: dict, i: int, last_change: str | None) -> tuple[str, str, float] | None:
    """(kind, path, MB) of what the model evaluated at position i ships as (module docstring)."""
    if last_change is not None:
        sec = stages[last_change]
        if sec.get("diff_size_mb") is not None:
            return "sparse diff", str(sec.get("diff_path")), float(sec["diff_size_mb"])
        if sec.get("adapter_size_mb") is not None:
            return "LoRA adapter", str(sec.get("adapter_path")), float(sec["adapter_size_mb"])
    for name in order[i + 1:]:
        sec = stages[name]
        if sec.get("method") in ("save", "export") and sec.get("size_mb") is not None:
            kind = "compressed checkpoint" if sec["method"] == "export" else "model folder"
            return kind, str(sec.get("path")), float(sec["size_mb"])
        if _changes_model(sec):
            break
    cost = stages[order[i]].get("cost") or {}
    if cost.get("size_mb") is not None:
        return "model (save_pretrained)", "", float(cost["size_mb"])
    return None


def run_points(run: RunResult) -> list[Point]:
    """Every evaluated model of a run, in stage order (labels: run name, or run/stage if several)."""
    if run.rows is not None:
        return _row_points(run)
    order = [n for n in run.stages if isinstance(run.stages[n], dict)]
    found: list[tuple[int, tuple, str | None, list[str]]] = []
    trained: list[str] = []
    last_change = None
    for i, name in enumerate(order):
        sec = run.stages[name]
        if _changes_model(sec):
            last_change = name
            if _is_training(sec):
                trained.append(name)
        h = headline(sec)
        if h is not None and sec.get("method") in (None, "eval", "chat_eval"):
            found.append((i, h, last_change, list(trained)))
    points = []
    for i, (key, value, higher), changed, train_names in found:
        name = order[i]
        sec = run.stages[name]
        cost = sec.get("cost") or {}
        tsecs = [run.stages[t] for t in train_names]
        last_train = tsecs[-1] if tsecs else None
        trainable = None
        if last_train is not None:
            trainable = last_train.get("trainable_params", last_train.get("params"))
        art = _artifact(order, run.stages, i, changed)
        method = run.stages[changed].get("method") if changed else None
        points.append(Point(
            label=run.name if len(found) == 1 else f"{run.name}/{name}", run=run.name, stage=name,
            kind=KINDS.get(method, method or "base"), metric_name=key, metric=value, higher_is_better=higher,
            trainable_params=trainable, params=cost.get("params"),
            artifact=art[0] if art else None, artifact_path=resolve(run, art[1]) if art else None,
            artifact_mb=art[2] if art else None, latency_ms_b1=cost.get("latency_ms_b1"),
            throughput_b32=cost.get("throughput_seq_s_b32"),
            train_seconds=sum(float(t.get("train_seconds") or 0.0) for t in tsecs) if tsecs else None,
            peak_memory_mb=max((float(t["peak_memory_mb"]) for t in tsecs if t.get("peak_memory_mb")), default=None)))
    return points


def _row_points(run: RunResult) -> list[Point]:
    points = []
    for i, row in enumerate(run.rows or []):
        if not isinstance(row, dict) or headline(row) is None:
            continue
        key, value, higher = headline(row)
        cost = row.get("cost") or row.get("cost_after") or {}
        size = row.get("size_mb", cost.get("size_mb"))
        if size is None and row.get("size_bytes") is not None:
            size = row["size_bytes"] / 2**20
        label = str(row.get("run") or row.get("row") or row.get("part") or i)
        points.append(Point(
            label=f"{run.name}/{label}", run=run.name, stage=label, kind=str(row.get("pruner") or row.get("part") or run.name),
            metric_name=key, metric=value, higher_is_better=higher, trainable_params=row.get("trainable_params"),
            params=row.get("params", cost.get("params")), artifact="model" if size is not None else None,
            artifact_mb=size, latency_ms_b1=row.get("latency_ms_b1", cost.get("latency_ms_b1")),
            throughput_b32=row.get("throughput_seq_s_b32", cost.get("throughput_seq_s_b32")),
            train_seconds=row.get("train_seconds"),
            peak_memory_mb=row.get("peak_memory_mb", row.get("train_peak_memory_mb", row.get("peak_rss_mb")))))
    return points


# ---- training curves --------------------------------------------------------------------------

def read_log(path: str | Path) -> dict[str, list]:
    """log.jsonl -> {"train": [[step, loss]], "eval": [[step, {metrics}]]}; bad lines are an error."""
    out: dict[str, list] = {"train": [], "eval": []}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise ValueError(f"{path}:{n}: not a JSON line") from None
        if "eval" in rec and isinstance(rec["eval"], dict):
            out["eval"].append([rec.get("step"), rec["eval"]])
        elif "loss" in rec:
            out["train"].append([rec.get("step"), rec["loss"]])
    return out


def run_curves(run: RunResult, label_prefix: str = "") -> dict[str, dict]:
    """{label: {"train": [[step, loss]], "eval": [[step, value]], "metric": key}} per training stage.

    The logs are the training stages' `<run dir>/<stage>/log.jsonl` (the stage's output folder).
    """
    curves = {}
    for name, sec in run.stages.items():
        if not isinstance(sec, dict) or not _is_training(sec):
            continue
        log = run.path / name / "log.jsonl"
        if not log.exists():
            continue
        raw = read_log(log)
        metric, evals = None, []
        for step, metrics in raw["eval"]:
            h = headline(metrics)
            if h is not None:
                metric = h[0]
                evals.append([step, h[1]])
        label = f"{label_prefix}{name}" if label_prefix else name
        curves[label] = {"train": raw["train"], "eval": evals, "metric": metric}
    return curves


# ---- per-layer series -------------------------------------------------------------------------

def per_layer_series(run: RunResult, label_prefix: str = "") -> dict[str, dict]:
    """{label: {"what": ..., "values": [[layer name, value]]}} from sections and sparse diffs.

    Any section key `per_layer_<what>` holding [name, value] pairs (or a name -> value mapping)
    is a series (pruning logs `per_layer_sparsity`; other methods may log e.g. `per_layer_rank`).
    An `sft` stage's diff manifest gives the share of each weight's entries it trained.
    All-zero series (e.g. the sparsity of a structurally pruned, dense model) are left out.
    """
    series = {}
    for name, sec in run.stages.items():
        if not isinstance(sec, dict):
            continue
        for key, value in sec.items():
            if not key.startswith("per_layer_"):
                continue
            pairs = list(value.items()) if isinstance(value, dict) else value
            vals = [[str(p[0]), float(p[1])] for p in pairs or [] if isinstance(p, (list, tuple)) and len(p) == 2
                    and isinstance(p[1], (int, float))]
            if vals and any(v for _, v in vals):
                series[f"{label_prefix}{name}"] = {"what": key.removeprefix("per_layer_"), "values": vals}
        diff = resolve(run, sec.get("diff_path"))
        if diff and (Path(diff) / "manifest.json").exists():
            tensors = json.loads((Path(diff) / "manifest.json").read_text()).get("tensors") or {}
            vals = []
            for tname, meta in sorted(tensors.items(), key=lambda kv: _natural(kv[0])):
                numel = 1
                for d in meta.get("shape") or [0]:
                    numel *= int(d)
                vals.append([tname, meta.get("count", 0) / numel if numel else 0.0])
            if vals:
                series[f"{label_prefix}{name} (trained entries)"] = {"what": "trained share", "values": vals}
    return series


def _natural(name: str) -> list:
    """Sort key that puts layer 10 after layer 9."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# ---- size breakdown ---------------------------------------------------------------------------

def safetensors_sizes(path: str | Path) -> dict[str, int]:
    """Tensor name -> stored bytes, from the headers of the *.safetensors files under `path`."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(p.glob("*.safetensors"))
    sizes: dict[str, int] = {}
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 100 * 2**20:
                raise ValueError(f"{f}: safetensors header of {n} bytes; not a safetensors file")
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                start, end = meta["data_offsets"]
                sizes[name] = sizes.get(name, 0) + int(end) - int(start)
    return sizes


def categorize(name: str) -> str:
    low = name.lower()
    for category, pattern in _CATEGORY_RES:
        if pattern.search(low):
            return category
    return "other"


def size_breakdown(path: str | Path) -> dict[str, int]:
    """Bytes per category (embeddings / attention / ffn / heads / other) of an artifact folder."""
    out = dict.fromkeys(SIZE_CATEGORIES, 0)
    for name, size in safetensors_sizes(path).items():
        out[categorize(name)] += size
    return out


def point_breakdowns(points: list[Point]) -> dict[str, dict[str, int]]:
    """{point label: bytes per category} for points whose artifact folder holds safetensors."""
    out = {}
    for pt in points:
        if pt.artifact_path and Path(pt.artifact_path).is_dir() and any(Path(pt.artifact_path).glob("*.safetensors")):
            out[pt.label] = size_breakdown(pt.artifact_path)
    return out


def resolve(run: RunResult, path: str | None) -> str | None:
    """A path logged by a run, as it exists now: as written, or under the run folder by name
    (logged paths are relative to where the run was started)."""
    if not path:
        return path
    if Path(path).exists():
        return path
    parts = Path(path).parts
    for k in range(1, len(parts)):
        local = run.path.joinpath(*parts[-k:])
        if local.exists():
            return str(local)
    return path

"""Round-trip matrix: every artifact kind x every loading path -> the in-memory model, or the
documented clear error (docs/artifacts.md).

Loading paths:
  load            `sparseft.load.model.load_model(dir, task)` (what every verb and `sparseft.load` use)
  from_pretrained `AutoModelFor*.from_pretrained(dir)` after `import sparseft`
  cli_eval        `sparseft eval DIR --data FILE` through the CLI `main()` in-process: metrics equal
                  those of the in-memory model on the same file
  plain           `from_pretrained` as plain transformers sees it: sparseft's quantizer is taken out
                  of transformers' registry for the test (the real no-sparseft process is checked
                  in test_plain_transformers.py)

Adding an artifact kind: write `build(ctx) -> (model, folder)` and call
`register(Kind(name, build, expect={...}))`; `expect` maps a path to `SAME` or to an
`Err(exception type, message regex)`; unlisted paths default to `family` (see FAMILIES).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

import sparseft  # noqa: F401  registers the quantizer, as users get it
import sparseft.methods  # noqa: F401  every registered method
from sparseft.cli.main import main
from sparseft.compress.prune.api import prune_
from sparseft.compress.prune.magnitude import MagnitudePruneConfig
from sparseft.compress.prune.nm import NMPruneConfig
from sparseft.compress.prune.structured import StructuredPruneConfig
from sparseft.compress.quantize import RTNConfig, needs_batches, quantize_
from sparseft.export.compressed import export_compressed
from sparseft.export.fingerprint import fingerprint
from sparseft.export.sparse_diff import save_diff
from sparseft.load.data import DataConfig, build_eval_data
from sparseft.load.model import load_model, load_tokenizer
from sparseft.registry import REGISTRY
from sparseft.sft.api import diff_from_layers
from sparseft.sft.layer import merge_sparse_, sparsify_

LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
PATHS = ("load", "from_pretrained", "cli_eval", "plain")
TOL = 1e-5


@dataclass(frozen=True)
class Err:
    exc: type | tuple
    match: str


SAME = "same"
MISMATCH_GUARD = Err(RuntimeError, "ignore_mismatched_sizes")         # plain transformers refuses
FAMILIES = {
    "plain": dict.fromkeys(PATHS, SAME),                               # ordinary save_pretrained folder
    "modules": {"load": SAME, "from_pretrained": SAME, "cli_eval": SAME, "plain": MISMATCH_GUARD},
    "compressed": {"load": SAME, "from_pretrained": Err(ValueError, "sparseft compressed checkpoint"),
                   "cli_eval": SAME, "plain": MISMATCH_GUARD},
    # no config.json of its own: transformers' "Unrecognized model ... config.json"; the card says what to run
    "diff": {"load": SAME, "from_pretrained": Err((OSError, ValueError), "config.json"), "cli_eval": SAME,
             "plain": Err((OSError, ValueError), "config.json")},
}


@dataclass(frozen=True)
class Kind:
    name: str
    build: Callable  # (ctx) -> (in-memory model, folder)
    family: str = "plain"
    expect: dict = field(default_factory=dict)
    tol: float = TOL
    archs: tuple = ("bert", "llama")

    def expected(self, path: str):
        return self.expect.get(path, FAMILIES[self.family][path])


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    assert kind.name not in KINDS, kind.name
    KINDS[kind.name] = kind
    return kind


# ------------------------------------------------------------------ the base models
@dataclass
class Ctx:
    arch: str
    base: torch.nn.Module         # the task model (BERT NER / Llama LM), saved at base_dir
    base_dir: Path
    out: Path
    task: str
    labels: list | None

    def fresh(self) -> torch.nn.Module:
        return copy.deepcopy(self.base)

    def calib(self) -> list[dict]:
        gen = torch.Generator().manual_seed(1)
        vocab = self.base.config.vocab_size
        return [{"input_ids": torch.randint(7, vocab, (2, 12), generator=gen),
                 "attention_mask": torch.ones(2, 12, dtype=torch.long)} for _ in range(2)]

    def save(self, model, name: str) -> Path:
        path = self.out / name
        model.save_pretrained(path)
        load_tokenizer(str(self.base_dir)).save_pretrained(path)
        return path


def _linear_weights(model) -> list[str]:
    return [n for n, p in model.named_parameters()
            if p.ndim == 2 and (".layer." in n or ".layers." in n) and "embed" not in n]


def _random_sft(ctx: Ctx, model, density: float = 0.05):
    gen = torch.Generator().manual_seed(2)
    names = _linear_weights(model)
    shapes = {n: model.get_parameter(n).shape for n in names}
    masks = {n: torch.rand(shapes[n], generator=gen) < density for n in names}
    layers = sparsify_(model, masks)
    with torch.no_grad():
        for layer in layers.values():
            layer.values.copy_(0.05 * torch.randn(layer.values.shape, generator=gen))
    return layers, names


# ------------------------------------------------------------------ artifact kinds
def build_dense(ctx):
    model = ctx.fresh()
    return model, ctx.save(model, "dense")


def build_sft_merged(ctx):
    model = ctx.fresh()
    _random_sft(ctx, model)
    merge_sparse_(model)
    return model, ctx.save(model, "sft_merged")


def build_sft_wrapped(ctx):  # what an HF Trainer checkpoint of a sparsified model is
    model = ctx.fresh()
    _random_sft(ctx, model)
    return model, ctx.save(model, "sft_wrapped")


def build_diff(ctx):
    model = ctx.fresh()
    names = _linear_weights(model)
    fp = fingerprint(model, names)
    layers, _ = _random_sft(ctx, model)
    manifest = {"base_model": str(ctx.base_dir), "base_fingerprint": fp, "fingerprint_tensors": names,
                "task": ctx.task, "labels": ctx.labels}
    path = ctx.out / "diff"
    save_diff(diff_from_layers(layers, {}, manifest), path)
    return model, path


def build_lora(ctx):
    peft = pytest.importorskip("peft")
    targets = ["query", "value"] if ctx.arch == "bert" else ["q_proj", "v_proj"]
    torch.manual_seed(3)
    model = peft.get_peft_model(ctx.fresh(), peft.LoraConfig(r=2, target_modules=targets, init_lora_weights=False))
    model.peft_config["default"].base_model_name_or_path = str(ctx.base_dir)
    path = ctx.out / "lora"
    model.save_pretrained(path)
    return model, path


def _pruned(cfg, name):
    def build(ctx):
        model = ctx.fresh()
        prune_(model, cfg, batches=ctx.calib())
        return model, ctx.save(model, name)
    return build


def _quantized(method_name):
    def build(ctx):
        method = REGISTRY.get("quantize", method_name)
        cfg = method.config_cls()
        model = ctx.fresh()
        quantize_(model, cfg, batches=ctx.calib() if needs_batches(cfg) else None)
        return model, ctx.save(model, f"q_{method_name}")
    return build


def _compressed(name, quant=None, prune=None, sparse="auto", layout="auto", want_layout=None):
    """`quant`: one quantizer config or a list applied in order (calibrated ones get ctx.calib())."""
    def build(ctx):
        model = ctx.fresh()
        if prune is not None:
            prune_(model, prune)
        for q in ([] if quant is None else quant if isinstance(quant, list) else [quant]):
            quantize_(model, q, batches=ctx.calib() if needs_batches(q) else None)
        path = ctx.out / name
        stats = export_compressed(model, path, tokenizer=load_tokenizer(str(ctx.base_dir)), sparse=sparse,
                                  layout=layout)
        assert want_layout is None or stats["layout"] == want_layout, stats["layout"]
        return model, path
    return build


register(Kind("dense", build_dense))
register(Kind("sft_merged", build_sft_merged))
register(Kind("sft_wrapped", build_sft_wrapped, family="modules"))
register(Kind("sparse_diff", build_diff, family="diff"))
register(Kind("lora_adapter", build_lora, family="plain", tol=1e-4))  # transformers + peft load adapters too
register(Kind("prune_unstructured", _pruned(MagnitudePruneConfig(sparsity=0.5), "p_mag")))
register(Kind("prune_2of4", _pruned(NMPruneConfig(n=2, m=4), "p_nm")))
register(Kind("prune_structured", _pruned(StructuredPruneConfig(ffn_sparsity=0.5), "p_struct")))
# each registered quantizer, new ones included; module-swapping ones save through utils/swaps.py
QUANT_OVERRIDES = {"half": {"family": "plain", "tol": 5e-3}}   # a bf16 cast: a plain folder, bf16 rounding
for _name in REGISTRY.names("quantize"):
    register(Kind(f"quant_{_name}", _quantized(_name), **{"family": "modules", **QUANT_OVERRIDES.get(_name, {})}))
register(Kind("compressed_sparse_int4", _compressed(
    "c_sparse_int4", RTNConfig(bits=4, granularity="group", group_size=16), MagnitudePruneConfig(sparsity=0.5),
    want_layout="sparseft"), family="compressed"))
register(Kind("compressed_sparse_fp32", _compressed(
    "c_sparse_fp32", None, MagnitudePruneConfig(sparsity=0.6), want_layout="sparseft"), family="compressed"))
register(Kind("compressed_ct_int4", _compressed(
    "c_ct_int4", RTNConfig(bits=4, granularity="group", group_size=16), want_layout="compressed-tensors")))
register(Kind("compressed_ct_int8", _compressed(
    "c_ct_int8", RTNConfig(bits=8), sparse="never", want_layout="compressed-tensors")))
register(Kind("compressed_dynamic_int8", _compressed(
    "c_dyn", REGISTRY.get("quantize", "dynamic_int8").config_cls(), want_layout="sparseft"), family="compressed"))
register(Kind("compressed_static_int8", _compressed(
    "c_static", REGISTRY.get("quantize", "static_int8").config_cls(), want_layout="sparseft"), family="compressed"))
_EMB8 = RTNConfig(bits=8, targets=["Embedding"], ignore=[])  # int8 rows, one scale per row (bench_precision's emb8)
register(Kind("compressed_dynamic_int8_emb8", _compressed(
    "c_dyn_emb8", [REGISTRY.get("quantize", "dynamic_int8").config_cls(), _EMB8], want_layout="sparseft"),
    family="compressed"))


def _quantized_all(name, configs):  # several quantizers, saved with save_pretrained
    def build(ctx):
        model = ctx.fresh()
        for q in configs:
            quantize_(model, q, batches=ctx.calib() if needs_batches(q) else None)
        return model, ctx.save(model, name)
    return build


register(Kind("quant_dynamic_int8_emb8", _quantized_all(
    "q_dyn_emb8", [REGISTRY.get("quantize", "dynamic_int8").config_cls(), _EMB8]), family="modules"))


def _factorized(name, quant=None):  # low-rank factors (compress/factorize), optionally quantized
    def build(ctx):
        from sparseft.compress.factorize import WhitenedSVDConfig, factorize_

        model = ctx.fresh()
        factorize_(model, WhitenedSVDConfig(ratio=0.3), batches=ctx.calib(), progress=False)
        if quant is not None:
            quantize_(model, REGISTRY.get("quantize", quant).config_cls())
        return model, ctx.save(model, name)
    return build


register(Kind("factorized", _factorized("f_whiten"), family="modules"))
register(Kind("factorized_dynamic_int8", _factorized("f_dyn", "dynamic_int8"), family="modules"))


# ------------------------------------------------------------------ the matrix
NER_TEXT = ("john\tB-PER\nsmith\tI-PER\nvisited\tO\nparis\tB-LOC\n.\tO\n\n"
            "mary\tB-PER\nworks\tO\nat\tO\nacme\tB-ORG\ncorp\tI-ORG\n\n"
            "the\tO\ngerman\tB-MISC\nteam\tO\nwas\tO\nin\tO\nlondon\tB-LOC\n")
LM_TEXT = "the bank of london said today that john met mary in paris .\n" * 6


@pytest.fixture(scope="module", params=["bert", "llama"])
def ctx(request, tiny_bert_dir, tiny_llama_dir, tmp_path_factory):
    arch = request.param
    out = tmp_path_factory.mktemp(f"matrix_{arch}")
    if arch == "bert":
        torch.manual_seed(0)
        base = load_model(str(tiny_bert_dir), "ner", labels=LABELS).eval()
        task, labels, src = "ner", LABELS, tiny_bert_dir
    else:
        base = load_model(str(tiny_llama_dir), "lm").eval()
        task, labels, src = "lm", None, tiny_llama_dir
    base_dir = out / "base"
    base.save_pretrained(base_dir)
    load_tokenizer(str(src)).save_pretrained(base_dir)
    data_file = out / ("eval.conll" if task == "ner" else "eval.txt")
    data_file.write_text(NER_TEXT if task == "ner" else LM_TEXT)
    c = Ctx(arch, base, base_dir, out, task, labels)
    c.data_file, c.built = data_file, {}
    return c


def _built(ctx, kind):
    if kind.name not in ctx.built:
        model, folder = kind.build(ctx)
        ctx.built[kind.name] = (model.eval(), folder)
    return ctx.built[kind.name]


def _ids(ctx):
    return torch.randint(7, ctx.base.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(4))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


def _auto(ctx):
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    return AutoModelForTokenClassification if ctx.task == "ner" else AutoModelForCausalLM


def _eval_metrics(ctx, model):
    from sparseft.eval.evaluate import evaluate

    tok = load_tokenizer(str(ctx.base_dir))
    data = build_eval_data(DataConfig(task=ctx.task, max_length=128), tok, ctx.labels or [], str(ctx.data_file))
    return evaluate(model, data, pad_id=tok.pad_token_id or 0)


def _load_by(path: str, ctx, folder: Path, tmp_path, monkeypatch):
    if path == "load":
        return load_model(str(folder), ctx.task)
    if path in ("from_pretrained", "plain"):
        if path == "plain":
            from transformers.quantizers import auto

            monkeypatch.delitem(auto.AUTO_QUANTIZER_MAPPING, "sparseft")
            monkeypatch.delitem(auto.AUTO_QUANTIZATION_CONFIG_MAPPING, "sparseft")
        return _auto(ctx).from_pretrained(str(folder))
    raise AssertionError(path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind_name", list(KINDS))
def test_roundtrip(ctx, kind_name, path, tmp_path, monkeypatch):
    kind = KINDS[kind_name]
    if ctx.arch not in kind.archs:
        pytest.skip(f"{kind.name} has no {ctx.arch} case")
    model, folder = _built(ctx, kind)
    expected = kind.expected(path)
    if path == "cli_eval":
        out = tmp_path / "metrics.json"
        rc = main(["eval", str(folder), "--data", str(ctx.data_file), "--task", ctx.task, "--json", str(out)])
        assert rc == 0
        got = json.loads(out.read_text())["stages"]["eval"] if expected == SAME else None
        ref = _eval_metrics(ctx, model)
        for key, value in ref.items():
            if isinstance(value, float) and key != "eval_seconds":
                assert got[key] == pytest.approx(value, rel=1e-4, abs=kind.tol), key
        return
    if isinstance(expected, Err):
        with pytest.raises(expected.exc, match=expected.match):
            _load_by(path, ctx, folder, tmp_path, monkeypatch)
        return
    loaded = _load_by(path, ctx, folder, tmp_path, monkeypatch).eval()
    ids = _ids(ctx)
    diff = (_logits(loaded, ids) - _logits(model, ids)).abs().max().item()
    assert diff <= kind.tol, f"{kind.name} via {path}: max |dlogit| {diff:.3g}"


def test_every_registered_quantizer_is_in_the_matrix():
    assert {f"quant_{n}" for n in REGISTRY.names("quantize")} <= set(KINDS)

"""Folder kinds are recognised and loaded right; checkpoints with missing tensors are refused;
GGUF models save after loading; compressed folders evaluate through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import sparseft  # noqa: F401
from sparseft.compress.quantize import RTNConfig, quantize_
from sparseft.export.compressed import export_compressed
from sparseft.load.artifacts import artifact_kind, tokenizer_source
from sparseft.load.model import load_model, load_tokenizer

LABELS = ["O", "B-PER", "I-PER"]


@pytest.fixture
def ner(tiny_bert_dir):
    torch.manual_seed(0)
    return load_model(str(tiny_bert_dir), "ner", labels=LABELS).eval()


def test_kinds(ner, tmp_path, tiny_bert_dir):
    ner.save_pretrained(tmp_path / "dense")
    assert artifact_kind(str(tmp_path / "dense")) == "model"
    assert artifact_kind("minilm") == "model"
    quantize_(ner, RTNConfig(bits=4, symmetric=False, granularity="group", group_size=16))
    ner.save_pretrained(tmp_path / "q")
    assert artifact_kind(str(tmp_path / "q")) == "sparseft-modules"
    export_compressed(ner, tmp_path / "c")
    assert artifact_kind(str(tmp_path / "c")) == "compressed"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.json").write_text(json.dumps({"base_model": str(tiny_bert_dir)}))
    (tmp_path / "d" / "diff.safetensors").write_bytes(b"")
    assert artifact_kind(str(tmp_path / "d")) == "sparse-diff"
    assert tokenizer_source(str(tmp_path / "d")) == str(tiny_bert_dir)  # the diff has no tokenizer
    (tmp_path / "c" / "compression_config.json").unlink()
    with pytest.raises(ValueError, match="compression_config.json is missing"):
        artifact_kind(str(tmp_path / "c"))


def test_missing_tensors_are_refused_naming_folder_and_key(ner, tmp_path):
    ner.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    state = load_file(path)
    del state["bert.encoder.layer.1.output.dense.weight"]
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"m: the checkpoint lacks 1 tensors .*layer\.1\.output\.dense\.weight"):
        load_model(str(tmp_path / "m"), "ner")


def test_a_new_head_is_allowed_only_for_new_labels(ner, tmp_path, tiny_bert_dir):
    load_model(str(tiny_bert_dir), "ner", labels=LABELS)  # encoder folder + labels: a fresh head is asked for
    ner.save_pretrained(tmp_path / "m")
    load_model(str(tmp_path / "m"), "ner", labels=["O", "B-LOC"])  # other labels: fresh head again
    state = load_file(tmp_path / "m" / "model.safetensors")
    del state["classifier.weight"]
    save_file(state, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="classifier.weight"):
        load_model(str(tmp_path / "m"), "ner")  # same labels: the head must be in the folder


def test_untied_lm_head_missing_is_refused(tmp_path, tiny_llama_dir):
    model = load_model(str(tiny_llama_dir), "lm")
    model.save_pretrained(tmp_path / "lm")
    state = load_file(tmp_path / "lm" / "model.safetensors")
    if "lm_head.weight" not in state:
        pytest.skip("tied embeddings: no separate lm_head tensor")
    del state["lm_head.weight"]
    save_file(state, tmp_path / "lm" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lm_head.weight"):
        load_model(str(tmp_path / "lm"), "lm")


def _bpe_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["the cat sat on the mat", "john met mary in paris"] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")


def _tiny_gguf(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from sparseft.export.gguf import export_gguf

    tok = _bpe_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    export_gguf(LlamaForCausalLM(cfg).eval(), tmp_path / "m.gguf", tokenizer=tok, qtype="q8_0")
    return tmp_path / "m.gguf", tok


@pytest.mark.parametrize("verb", ["train", "quantize"])
def test_cli_verbs_save_a_gguf_model(tmp_path, verb):
    """`sparseft train / quantize --model x.gguf` used to fail at save ("quantized with gguf and is
    not serializable") after all the work; now the dequantized model saves."""
    pytest.importorskip("gguf")
    from sparseft.cli.main import main

    gguf_path, _ = _tiny_gguf(tmp_path)
    text = tmp_path / "train.txt"
    text.write_text("the cat sat on the mat . john met mary in paris .\n" * 20)
    out = tmp_path / "run"
    if verb == "train":
        argv = ["train", "--model", str(gguf_path), "--task", "lm", "--train", str(text), "--eval", str(text),
                "--max-steps", "1", "--batch-size", "2", "--mixed-precision", "no", "--output-dir", str(out)]
    else:
        argv = ["quantize", "--model", str(gguf_path), "--task", "lm", "--method", "rtn", "--no-cost",
                "--output-dir", str(out)]
    assert main(argv) == 0
    saved = out / ("model" if verb == "train" else "compressed")
    assert (saved / "model.safetensors").exists()
    assert load_model(str(saved), "lm") is not None


def test_gguf_model_is_dequantized_and_saves(tmp_path):
    """Every verb loads through load_model: a GGUF model must save (train, prune, quantize ...)."""
    pytest.importorskip("gguf")
    from sparseft.compress.prune.api import prune_
    from sparseft.compress.prune.magnitude import MagnitudePruneConfig
    from sparseft.export.save import save_artifact

    _, tok = _tiny_gguf(tmp_path)
    model = load_model(str(tmp_path / "m.gguf"), "lm")
    assert getattr(model, "hf_quantizer", None) is None and model.dtype == torch.float32
    ids = torch.randint(0, len(tok), (1, 8), generator=torch.Generator().manual_seed(1))
    prune_(model, MagnitudePruneConfig(sparsity=0.5))
    save_artifact(model, load_tokenizer(str(tmp_path / "m.gguf")), tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(load_model(str(tmp_path / "saved"), "lm")(input_ids=ids).logits, model(input_ids=ids).logits)
    assert "from_pretrained" in (tmp_path / "saved" / "README.md").read_text()


def test_compressed_folder_through_cli_eval_and_from_pretrained(ner, tmp_path, tiny_tokenizer):
    from transformers import AutoModelForTokenClassification

    from sparseft.cli.main import main

    quantize_(ner, RTNConfig(bits=4, symmetric=False, granularity="group", group_size=16))
    export_compressed(ner, tmp_path / "c", tokenizer=tiny_tokenizer)
    card = (tmp_path / "c" / "README.md").read_text()
    assert "library_name: sparseft" in card and "sparseft.load(" in card
    with pytest.raises(ValueError, match="sparseft compressed checkpoint"):
        AutoModelForTokenClassification.from_pretrained(tmp_path / "c")
    data = tmp_path / "dev.conll"
    data.write_text("john\tB-PER\nsmith\tI-PER\nvisited\tO\nparis\tO\n\nmary\tB-PER\nworks\tO\n")
    assert main(["eval", str(tmp_path / "c"), "--data", str(data), "--json", str(tmp_path / "m.json")]) == 0
    from sparseft.eval.evaluate import evaluate
    from sparseft.load.data import DataConfig, build_eval_data

    ref = evaluate(ner, build_eval_data(DataConfig(task="ner"), tiny_tokenizer, LABELS, str(data)))
    got = json.loads((tmp_path / "m.json").read_text())["stages"]["eval"]
    assert got["f1"] == ref["f1"] and got["precision"] == ref["precision"]


def test_diff_without_loadable_base_is_a_clear_error(tmp_path):
    from sparseft.export.sparse_diff import SparseDiff, save_diff

    diff = SparseDiff({"w": torch.tensor([0])}, {"w": torch.tensor([1.0])}, {"w": (2, 2)}, {"w": torch.tensor([0.0])},
                      {}, {"base_model": str(tmp_path / "gone"), "task": "ner"})
    save_diff(diff, tmp_path / "d")
    with pytest.raises(ValueError, match="base model .*gone.* could not be loaded"):
        load_model(str(tmp_path / "d"), "ner", labels=LABELS)


def test_chat_on_quantized_and_compressed_folders_matches_the_dequantized_model(tmp_path, tiny_llama_dir, monkeypatch,
                                                                              capsys):
    """`sparseft chat DIR` on a quantized save_pretrained folder and on a compressed export
    replies exactly as a plain folder holding the dequantized weights does."""
    import io

    from sparseft.cli.main import main

    model = load_model(str(tiny_llama_dir), "lm")
    quantize_(model, RTNConfig(bits=4, symmetric=False, granularity="group", group_size=16))
    tok = load_tokenizer(str(tiny_llama_dir))
    model.save_pretrained(tmp_path / "q")
    tok.save_pretrained(tmp_path / "q")
    export_compressed(model, tmp_path / "c", tokenizer=tok)
    plain = load_model(str(tiny_llama_dir), "lm")
    with torch.no_grad():
        for name, module in model.named_modules():
            if hasattr(module, "dequantize") and hasattr(module, "qweight"):
                plain.get_submodule(name).weight.copy_(module.dequantize())
    plain.save_pretrained(tmp_path / "plain")
    tok.save_pretrained(tmp_path / "plain")
    replies = []
    for folder in ("plain", "q", "c"):
        monkeypatch.setattr("sys.stdin", io.StringIO("john visited paris\n/exit\n"))
        capsys.readouterr()
        assert main(["chat", str(tmp_path / folder), "--max-new-tokens", "6"]) == 0
        replies.append(capsys.readouterr().out)
    assert replies[0].strip() and replies[0] == replies[1] == replies[2]


def test_eval_refuses_a_folder_with_missing_tensors_in_one_line(ner, tmp_path, capsys):
    from sparseft.cli.main import main

    ner.save_pretrained(tmp_path / "m")
    state = load_file(tmp_path / "m" / "model.safetensors")
    del state["bert.encoder.layer.0.attention.self.key.weight"]
    save_file(state, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    data = tmp_path / "dev.conll"
    data.write_text("john\tB-PER\n")
    assert main(["eval", str(tmp_path / "m"), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "lacks 1 tensors" in err and "attention.self.key.weight" in err and str(tmp_path / "m") in err


def test_recipe_with_a_compressed_model_folder(ner, tmp_path, tiny_tokenizer):
    """`model: DIR` in a recipe loads the compressed folder (no random weights) and scores it."""
    from sparseft.config.recipe import Recipe
    from sparseft.eval.evaluate import evaluate
    from sparseft.load.data import DataConfig, build_eval_data
    from sparseft.pipeline import run

    quantize_(ner, RTNConfig(bits=4, symmetric=False, granularity="group", group_size=16))
    export_compressed(ner, tmp_path / "c", tokenizer=tiny_tokenizer)
    data = tmp_path / "dev.conll"
    data.write_text("john\tB-PER\nsmith\tI-PER\nvisited\tO\n\nmary\tB-PER\nworks\tO\n")
    ctx = run(Recipe.from_dict({"model": str(tmp_path / "c"), "output_dir": str(tmp_path / "run"),
                                "data": {"task": "ner", "train": str(data), "eval": str(data)},
                                "stages": [{"method": "eval"}]}))
    ref = evaluate(ner, build_eval_data(DataConfig(task="ner"), tiny_tokenizer, LABELS, str(data)))
    got = ctx.report.sections["eval"]
    assert got["f1"] == ref["f1"] and got["recall"] == ref["recall"]


def test_foreign_compressed_tensors_folder_is_dequantized_on_load(ner, tmp_path):
    """A compressed-tensors folder from another tool (no compression_config.json) loads as plain
    fp32 Linear layers with the same outputs, so prune / train / save work on it."""
    pytest.importorskip("compressed_tensors")
    quantize_(ner, RTNConfig(bits=4, granularity="group", group_size=16))
    assert export_compressed(ner, tmp_path / "ct")["layout"] == "compressed-tensors"
    (tmp_path / "ct" / "compression_config.json").unlink()
    assert artifact_kind(str(tmp_path / "ct")) == "compressed-tensors"
    loaded = load_model(str(tmp_path / "ct"), "ner")
    ids = torch.randint(7, 60, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, ner(input_ids=ids).logits)
    assert type(loaded.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear
    loaded.save_pretrained(tmp_path / "saved")  # nothing quantized is left attached

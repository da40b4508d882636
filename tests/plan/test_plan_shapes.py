"""Model shapes from configs alone (meta device): bundled hub configs, a local config.json, the CLI."""

import json

import pytest
import torch

from sparseft.cli.main import main
from sparseft.plan.shapes import model_shape


def test_bundled_llama_1b_counts_match_the_hub_model():
    shape = model_shape("llama-3.2-1b")
    assert shape.params == 1_235_814_400  # Llama-3.2-1B (tied embeddings), as reported on the hub
    assert (shape.layers, shape.hidden, shape.kv_dim, shape.vocab) == (16, 2048, 512, 128256)
    per_layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192
    assert shape.linear_params == 16 * per_layer
    assert shape.largest_linear == 2048 * 8192 and shape.decoder


def test_local_config_json_equals_the_real_model(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    shape = model_shape(str(tiny_llama_dir / "config.json"))
    real = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert shape.params == sum(p.numel() for p in real.parameters())
    lin = [m for n, m in real.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    assert shape.linear_params == sum(m.weight.numel() for m in lin)
    assert shape.lora_per_rank == sum(m.in_features + m.out_features for m in lin)
    assert model_shape(str(tiny_llama_dir)).params == shape.params  # the folder works too


def test_unknown_model_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"hidden_size": 4}))
    assert main(["plan", str(bad)]) == 2
    assert "model_type" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "nowhere")]) == 2


def test_cli_prints_tables_and_json(tiny_llama_dir, capsys):
    assert main(["plan", str(tiny_llama_dir), "--devices", "2", "--mode", "sparse,lora", "--seq-len", "16"]) == 0
    out = capsys.readouterr().out
    assert out.count("| zero3-offload |") == 2 and "sparse (density 0.01)" in out and "LoRA (rank 8)" in out
    assert main(["plan", str(tiny_llama_dir), "--mode", "full", "--strategies", "ddp,fsdp", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["strategy"] for r in data["plans"][0]["rows"]] == ["ddp", "fsdp"]
    with pytest.raises(SystemExit):
        main(["plan", str(tiny_llama_dir), "--dtype", "int3"])

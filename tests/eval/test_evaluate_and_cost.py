import torch

from sparseft.eval.cost import count_parameters, measure_cost, time_forward
from sparseft.eval.evaluate import evaluate
from sparseft.load.data import DataConfig, build_task_data
from sparseft.load.model import load_model


def test_ner_evaluate_pads_truncated_words_with_o(tiny_bert_dir, tiny_tokenizer, toy_ner_files):
    train, dev = toy_ner_files
    data = build_task_data(DataConfig(task="ner", train=str(train), eval=str(dev), max_length=8), tiny_tokenizer)
    model = load_model(str(tiny_bert_dir), "ner", labels=data.labels)
    out = evaluate(model, data)
    assert {"precision", "recall", "f1", "per_type", "n_examples"} <= set(out)
    assert out["n_examples"] == 4 and 0.0 <= out["f1"] <= 1.0


def test_perfect_predictions_score_one(tiny_bert_dir, tiny_tokenizer, toy_ner_files):
    """A model whose head outputs the gold label (via a lookup on input ids) must get F1 = 1."""
    train, dev = toy_ner_files
    data = build_task_data(DataConfig(task="ner", train=str(train), eval=str(dev)), tiny_tokenizer)

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.table = {}
            for f in data.eval:
                for tok, lab in zip(f["input_ids"], f["labels"]):
                    if lab >= 0:
                        self.table[tok] = lab

        def forward(self, input_ids, attention_mask=None, **_):
            logits = torch.zeros(*input_ids.shape, len(data.labels))
            for idx in torch.nonzero(torch.ones_like(input_ids)):
                lab = self.table.get(int(input_ids[tuple(idx)]), 0)
                logits[idx[0], idx[1], lab] = 1.0
            return type("Out", (), {"logits": logits})()

    out = evaluate(Oracle(), data)
    assert out["f1"] == 1.0


def test_lm_perplexity_is_finite(tiny_llama_dir, tiny_tokenizer, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(["john visited paris ."] * 100))
    data = build_task_data(DataConfig(task="lm", train=str(text), block_size=32, eval_fraction=0.3), tiny_tokenizer)
    out = evaluate(load_model(str(tiny_llama_dir), "lm"), data)
    assert 1.0 < out["perplexity"] < 10 * len(tiny_tokenizer)


def test_cost_counts_zeros_and_ties():
    lin = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, 0] = 1.0
    c = count_parameters(lin)
    assert c == {"params": 16, "nonzero_params": 1, "sparsity": 15 / 16}


def test_measure_cost_on_tiny_model(tiny_bert_dir):
    model = load_model(str(tiny_bert_dir), "cls", labels=["a", "b"])
    cost = measure_cost(model, seq_len=16, repeats=2)
    assert cost["size_mb"] > 0 and cost["latency_ms_b1"] > 0 and cost["throughput_seq_s_b32"] > 0
    assert time_forward(model, batch=2, seq_len=8, warmup=1, repeats=2) > 0

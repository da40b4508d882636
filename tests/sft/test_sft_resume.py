"""Resume of sparse fine-tuning: lean checkpoints (value vectors, indices, heads; no copy of the
frozen base) resume bit-exactly, also with regrow's moving indices; a second `sparse_finetune`
call on other data or another mask config into the same folder is refused, an identical finished
one is reported; a corrupt saved-masks file is named."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sft_toys import collate, killing_loss, ner_data, ner_model, train_cfg, weights, write_ner_files
from sparseft.masks.select import mask_config
from sparseft.sft import sparse_finetune
from sparseft.sft.api import MASKS_FILE
from sparseft.train.checkpoint import WEIGHTS, CheckpointError, checkpoint_dir
from sparseft.train.identity import ResumeMismatch


@pytest.fixture(scope="module")
def datasets(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("ner")
    train_file, dev = write_ner_files(root)
    other = root / "other.conll"
    other.write_text(train_file.read_text().replace("paris", "berlin"))
    return ner_data(tiny_tokenizer, train_file, dev), ner_data(tiny_tokenizer, other, dev)


def _run(data, model_dir, tokenizer, out, cfg, crash_at=None, **kw):
    model = ner_model(model_dir, data.labels)
    loss_fn = killing_loss(crash_at)
    tc = train_cfg(out, **{"max_steps": 8, "resume": True, "save_every": 3, **kw})
    result, diff = sparse_finetune(model, data.train, tc, cfg, collate_fn=collate(tokenizer), loss_fn=loss_fn)
    return model, diff, result


@pytest.mark.parametrize("method,options", [("fisher", {"n_batches": 2}),
                                            ("regrow", {"every": 2, "grad_window": 1, "drop_fraction": 0.5})])
def test_killed_sparse_run_resumes_bit_exactly_from_a_lean_checkpoint(datasets, tiny_bert_dir, tiny_tokenizer,
                                                                      tmp_path, method, options):
    data, _ = datasets
    cfg = mask_config(method, density=0.05, **options)
    straight, ref_diff, _ = _run(data, tiny_bert_dir, tiny_tokenizer, tmp_path / "a", cfg)
    n_select = cfg.batches_needed()
    with pytest.raises(KeyboardInterrupt):
        _run(data, tiny_bert_dir, tiny_tokenizer, tmp_path / "b", cfg, crash_at=n_select + 5)  # in step 5
    ckpt = checkpoint_dir(tmp_path / "b")
    assert json.loads((ckpt / "state.json").read_text())["loop"]["step"] == 3
    with safe_open(str(ckpt / WEIGHTS), "pt") as f:
        saved = set(f.keys())
    # the trainable tensors only: value vectors, their indices, the new head (+ small buffers)
    assert any(k.endswith(".values") for k in saved) and any(k.endswith(".indices") for k in saved)
    assert not any(k.endswith("base.weight") or "word_embeddings" in k for k in saved)
    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in ner_model(tiny_bert_dir, data.labels).state_dict().items()}, str(full))
    assert (ckpt / WEIGHTS).stat().st_size < 0.25 * full.stat().st_size
    assert (ckpt / "optimizer.pt").stat().st_size < 0.25 * full.stat().st_size

    resumed, diff, result = _run(data, tiny_bert_dir, tiny_tokenizer, tmp_path / "b", cfg)
    assert result.resumed_from_step == 3 and result.steps == 8
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ref_diff.indices:
        assert torch.equal(ref_diff.indices[name], diff.indices[name])
        assert torch.equal(ref_diff.values[name], diff.values[name])


def test_a_second_call_on_other_data_or_mask_is_refused(datasets, tiny_bert_dir, tiny_tokenizer, tmp_path, capsys):
    data, other = datasets
    cfg = mask_config("fisher", density=0.05, n_batches=2)
    out = tmp_path / "run"
    _, first, _ = _run(data, tiny_bert_dir, tiny_tokenizer, out, cfg)
    with pytest.raises(ResumeMismatch, match="training data: 24 -> 24 examples, tokenized features"):
        _run(other, tiny_bert_dir, tiny_tokenizer, out, cfg)
    with pytest.raises(ResumeMismatch, match=r"config mask.density: 0.05 -> 0.1"):
        _run(data, tiny_bert_dir, tiny_tokenizer, out, mask_config("fisher", density=0.1, n_batches=2))
    with pytest.raises(ResumeMismatch, match=r"config mask._type: 'FisherMaskConfig' -> 'MagnitudeMaskConfig'"):
        _run(data, tiny_bert_dir, tiny_tokenizer, out, mask_config("magnitude", density=0.05))
    capsys.readouterr()
    _, again, result = _run(data, tiny_bert_dir, tiny_tokenizer, out, cfg)  # identical and finished
    assert "holds a finished run (8 steps)" in capsys.readouterr().out
    assert result.resumed_from_step == 8
    assert all(torch.equal(first.values[n], again.values[n]) for n in first.values)
    _, fresh, result = _run(other, tiny_bert_dir, tiny_tokenizer, out, cfg, resume=False)  # the way out
    assert result.resumed_from_step is None and result.steps == 8


def test_a_corrupt_masks_file_is_named(datasets, tiny_bert_dir, tiny_tokenizer, tmp_path):
    data, _ = datasets
    cfg = mask_config("fisher", density=0.05, n_batches=2)
    out = tmp_path / "run"
    _run(data, tiny_bert_dir, tiny_tokenizer, out, cfg)
    masks = out / MASKS_FILE
    masks.write_bytes(masks.read_bytes()[:40])
    with pytest.raises(CheckpointError) as exc:
        _run(data, tiny_bert_dir, tiny_tokenizer, out, cfg)
    assert str(masks) in str(exc.value) and "\n" not in str(exc.value)

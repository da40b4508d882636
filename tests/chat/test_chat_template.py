"""Loss masks cover exactly the assistant spans, for every format and for both template paths."""

from __future__ import annotations

import pytest
from chat_fixtures import USER_WORDS, format_records

from sparseft.chat.formats import FORMATS, records_to_conversations
from sparseft.chat.template import (ChatTemplate, TemplateError, resolve_template, tokenize_conversation,
                                    truncate_example)
from sparseft.load.tokenize import IGNORE_INDEX


def _expected_labels(conv, tmpl: ChatTemplate) -> list[int]:
    """Oracle: each assistant turn's content tokenized on its own, followed by the turn's end token."""
    tok = tmpl.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>") if tmpl.name == "model" else tok.eos_token_id
    out = []
    for m in conv:
        if m["role"] == "assistant":
            out += tok(m["content"], add_special_tokens=False)["input_ids"] + [end]
    return out


def _runs(labels: list[int]) -> int:
    """Number of contiguous labelled runs."""
    return sum(1 for i, x in enumerate(labels) if x != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX))


@pytest.mark.parametrize("fmt", FORMATS[1:])
@pytest.mark.parametrize("which", ["model", "fallback"])
def test_mask_covers_exactly_the_assistant_spans(fmt, which, chatml_tokenizer, plain_tokenizer):
    tok = chatml_tokenizer if which == "model" else plain_tokenizer
    tmpl = resolve_template(tok, which)
    convs, _ = records_to_conversations(format_records()[fmt])
    user_ids = {i for w in USER_WORDS for i in tok(w, add_special_tokens=False)["input_ids"]}
    for conv in convs:
        feat = tokenize_conversation(conv, tmpl, max_seq_len=256)
        ids, labels = feat["input_ids"], feat["labels"]
        labelled = [x for x in labels if x != IGNORE_INDEX]
        assert labelled == _expected_labels(conv, tmpl)
        # labels are the tokens themselves, one contiguous run per assistant turn, no user word inside
        assert all(x == i for x, i in zip(labels, ids) if x != IGNORE_INDEX)
        assert _runs(labels) == sum(m["role"] == "assistant" for m in conv)
        assert not user_ids & set(labelled)
        assert labels[0] == IGNORE_INDEX and not feat["truncated"]


def test_loss_on_all_labels_every_token_but_the_first(chatml_tokenizer):
    conv, _ = records_to_conversations(format_records()["messages"][:1])
    feat = tokenize_conversation(conv[0], resolve_template(chatml_tokenizer), max_seq_len=256, loss_on="all")
    assert feat["labels"][0] == IGNORE_INDEX
    assert feat["labels"][1:] == feat["input_ids"][1:]


def test_model_template_is_used_and_fallback_is_announced(chatml_tokenizer, plain_tokenizer):
    tmpl = resolve_template(chatml_tokenizer)
    assert tmpl.name == "model"
    assert tmpl.render([{"role": "user", "content": "hi"}], add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n")
    assert chatml_tokenizer.convert_tokens_to_ids("<|im_end|>") in tmpl.stop_token_ids
    with pytest.warns(UserWarning, match="no chat template"):
        fb = resolve_template(plain_tokenizer)
    assert fb.name == "fallback" and fb.stop_strings == ("### Human:",)
    text = fb.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    assert text == "<s>### Human: q\n### Assistant: a</s>\n"
    with pytest.raises(TemplateError, match="no chat_template"):
        resolve_template(plain_tokenizer, "model")
    with pytest.raises(ValueError, match="unknown template"):
        resolve_template(plain_tokenizer, "nonsense")


def test_template_that_is_not_prefix_stable_is_rejected(plain_tokenizer):
    # renders the number of messages first: a prefix of the conversation is not a prefix of the text
    unstable = ChatTemplate(plain_tokenizer, "{{ messages|length }}{% for m in messages %} {{ m['content'] }}"
                                             "{% endfor %}", "unstable")
    conv = [{"role": "user", "content": "john"}, {"role": "assistant", "content": "paris"}]
    with pytest.raises(TemplateError, match="not prefix-stable"):
        tokenize_conversation(conv, unstable, max_seq_len=64)


def test_truncation_never_cuts_the_whole_response(chatml_tokenizer):
    tmpl = resolve_template(chatml_tokenizer)
    long_prompt = " ".join(["john visited"] * 60)
    conv = [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "paris city today"}]
    feat = tokenize_conversation(conv, tmpl, max_seq_len=32)
    labelled = [x for x in feat["labels"] if x != IGNORE_INDEX]
    assert len(feat["input_ids"]) == 32 and feat["truncated"] and not feat["response_cut"]
    assert labelled == _expected_labels(conv, tmpl)  # the whole (short) response survives
    assert feat["input_ids"][0] == chatml_tokenizer.convert_tokens_to_ids("<|im_start|>")  # kept first token
    # a response longer than the window keeps at least response_share of it
    conv = [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": " ".join(["paris"] * 80)}]
    feat = tokenize_conversation(conv, tmpl, max_seq_len=40, response_share=0.5)
    n_lab = sum(x != IGNORE_INDEX for x in feat["labels"])
    assert len(feat["input_ids"]) == 40 and feat["response_cut"] and n_lab >= 20


@pytest.mark.parametrize("n_prompt,n_resp,max_len", [(50, 3, 10), (3, 50, 10), (30, 30, 9), (1, 1, 8), (9, 1, 2)])
def test_truncate_example_budget(n_prompt, n_resp, max_len):
    ids = list(range(n_prompt + n_resp))
    labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
    out_ids, out_labels, cut = truncate_example(ids, labels, n_prompt, max_len, response_share=0.5)
    assert len(out_ids) == min(max_len, len(ids))
    kept_resp = [x for x in out_labels if x != IGNORE_INDEX]
    assert kept_resp, "the response must never be cut away entirely"
    assert kept_resp == ids[n_prompt:n_prompt + len(kept_resp)]  # response keeps its start
    assert cut == (len(kept_resp) < n_resp)


@pytest.mark.slow
def test_smollm2_chatml_masks_on_dolly():
    """The real BPE tokenizer and ChatML template of SmolLM2 on Dolly records: the labelled tokens
    decode to exactly the response plus the end-of-turn marker."""
    from chat_fixtures import shared_data

    from sparseft.chat.formats import read_chat_file
    from sparseft.load.model import ModelNotFound, load_tokenizer

    path = shared_data("dolly_open_qa", "validation.jsonl")
    try:
        tok = load_tokenizer("smollm2")
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    convs, _ = records_to_conversations(read_chat_file(path)[:40])
    tmpl = resolve_template(tok)
    assert tmpl.name == "model" and "<|im_start|>" in tmpl.render(convs[0])
    for conv in convs:
        feat = tokenize_conversation(conv, tmpl, max_seq_len=4096)
        labelled = tok.decode([x for x in feat["labels"] if x != IGNORE_INDEX])
        assert labelled == conv[-1]["content"] + "<|im_end|>\n"


def test_conversation_opening_with_the_assistant(chatml_tokenizer):
    tmpl = resolve_template(chatml_tokenizer)
    conv = [{"role": "assistant", "content": "paris"}, {"role": "user", "content": "john"},
            {"role": "assistant", "content": "london"}]
    feat = tokenize_conversation(conv, tmpl, max_seq_len=64)
    assert [x for x in feat["labels"] if x != IGNORE_INDEX] == _expected_labels(conv, tmpl)

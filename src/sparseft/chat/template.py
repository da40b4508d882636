"""Render conversations through a chat template and tokenize them with a loss mask.

Template. The model's own template (`tokenizer.chat_template`, rendered by
`tokenizer.apply_chat_template`) is used when it has one. Models without one get
`FALLBACK_TEMPLATE`, a plain-text template in the "### Human: / ### Assistant:" style of the Dolly
data (system text first, then one line per turn, every assistant turn ending in the EOS token so
the model learns to stop):

    <bos>{system}\\n\\n### Human: {user}\\n### Assistant: {assistant}<eos>\\n ...

Loss mask. By default only assistant tokens carry labels (`loss_on="assistant"`); prompt,
system and template tokens get IGNORE_INDEX (-100). `loss_on="all"` labels every token, as
DeepSpeed-Chat step 1 does. The assistant spans are found by tokenizing prefixes, which works for
any tokenizer and any template that renders a conversation's prefix as a prefix of the whole:

    start of assistant turn i = longest common token prefix of
                                 tok(render(msgs[:i], add_generation_prompt=True)) and tok(full)
    end of assistant turn i   = longest common token prefix of tok(render(msgs[:i+1])) and tok(full)

The common-prefix rule makes a token that straddles the boundary (BPE merging the space after
"Assistant:" into the first answer word) part of the response, which is right: the model must
predict it. A turn therefore covers the answer text plus the template's end-of-turn tokens
(e.g. `<|im_end|>`), never the role header. A template that rewrites earlier turns when more
follow (it is not prefix-stable) is reported as an error instead of producing a wrong mask.

Truncation (`truncate_example`) never cuts the whole response: when an example is longer than
`max_seq_len`, the last assistant turn keeps at least `response_share` of the window (or all of
itself if shorter), the prompt is cut from the left (keeping a leading special token such as BOS)
and the response from the right.

Label position 0 is always -100: no token predicts it, and packing (packing.py) relies on it so
that no label crosses from one packed example into the next.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sparseft.load.tokenize import IGNORE_INDEX

LOSS_ON = ("assistant", "all")

FALLBACK_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] + '\n\n' }}"
    "{% elif m['role'] == 'user' %}{{ '### Human: ' + m['content'] + '\n' }}"
    "{% else %}{{ '### Assistant: ' + m['content'] + (eos_token if eos_token else '') + '\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant: ' }}{% endif %}"
)
FALLBACK_STOP_STRINGS = ("### Human:",)


class TemplateError(ValueError):
    """The chat template cannot be used to build a correct loss mask."""


@dataclass
class ChatTemplate:
    """A tokenizer plus the Jinja template used to render conversations for it.

    Args:
        tokenizer: a Hugging Face tokenizer.
        source: Jinja template text, or None to use `tokenizer.chat_template`.
        name: 'model', 'fallback' or the template file the text came from (for reports).
    """

    tokenizer: Any
    source: str | None = None
    name: str = "model"

    def render(self, messages: Sequence[dict], *, add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(list(messages), chat_template=self.source, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        # Templates write their own BOS/special tokens, so the tokenizer must not add more.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def stop_token_ids(self) -> list[int]:
        """Token ids that end an assistant turn: EOS and, when the vocabulary has them, common
        end-of-turn markers (<|im_end|>, <|eot_id|>, <|end|>)."""
        tok = self.tokenizer
        ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
        vocab = tok.get_vocab()
        for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            if marker in vocab and vocab[marker] not in ids:
                ids.append(vocab[marker])
        return ids

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return FALLBACK_STOP_STRINGS if self.name == "fallback" else ()


def resolve_template(tokenizer, choice: str = "auto") -> ChatTemplate:
    """Pick the template: 'auto' (model's, else fallback), 'model', 'fallback' or a .jinja path."""
    has_own = bool(getattr(tokenizer, "chat_template", None))
    if choice == "auto":
        if not has_own:
            warnings.warn("the tokenizer has no chat template; using sparseft's fallback "
                          "'### Human: / ### Assistant:' template (see sparseft.chat.template)", stacklevel=2)
        return ChatTemplate(tokenizer, None, "model") if has_own else ChatTemplate(tokenizer, FALLBACK_TEMPLATE, "fallback")
    if choice == "model":
        if not has_own:
            raise TemplateError("template='model' but the tokenizer has no chat_template; use 'auto' or 'fallback'")
        return ChatTemplate(tokenizer, None, "model")
    if choice == "fallback":
        return ChatTemplate(tokenizer, FALLBACK_TEMPLATE, "fallback")
    path = Path(choice)
    if path.is_file():
        return ChatTemplate(tokenizer, path.read_text(encoding="utf-8"), str(path))
    raise ValueError(f"unknown template {choice!r}; valid choices: auto, model, fallback or a path to a "
                     f"Jinja template file")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _empty_prompt(template: ChatTemplate, full_text: str) -> str:
    """The text before the first assistant turn of a conversation that opens with the assistant:
    render a one-turn conversation with a sentinel answer and cut at the sentinel. "" when that is
    not a prefix of the conversation (the turn then starts at token 0)."""
    sentinel = "SPARSEFTSENTINEL"
    try:
        text = template.render([{"role": "assistant", "content": sentinel}])
    except Exception:  # a template may refuse a conversation that does not start with the user
        return ""
    head = text.split(sentinel)[0]
    return head if sentinel in text and full_text.startswith(head) else ""


def assistant_spans(messages: Sequence[dict], template: ChatTemplate, full_text: str,
                    ids: Sequence[int]) -> list[tuple[int, int]]:
    """Token [start, end) spans of every assistant turn in `ids` (the tokenized `full_text`)."""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = template.render(messages[:i], add_generation_prompt=True) if i else _empty_prompt(template, full_text)
        through = template.render(messages[:i + 1])
        for part in (before, through):
            if not full_text.startswith(part):
                raise TemplateError(
                    f"chat template {template.name!r} is not prefix-stable: rendering the first {i} "
                    f"message(s) does not give a prefix of the whole conversation, so assistant tokens "
                    f"cannot be located; use template='fallback' or a prefix-stable template")
        start = _common_prefix(template.encode(before), ids) if before else 0
        end = _common_prefix(template.encode(through), ids)
        if end > start:
            spans.append((start, end))
    return spans


def truncate_example(ids: list[int], labels: list[int], response_start: int, max_len: int, *,
                     response_share: float = 0.5, keep_first: bool = False) -> tuple[list[int], list[int], bool]:
    """Cut (ids, labels) to `max_len` tokens without dropping the whole response.

    Args:
        response_start: index of the first token of the last assistant turn (the "response").
        response_share: the response keeps at least this share of `max_len` (or all of itself).
        keep_first: keep token 0 (e.g. BOS) when the prompt is cut from the left.

    Returns:
        (ids, labels, response_cut) where response_cut says whether response tokens were dropped.
    """
    n = len(ids)
    if n <= max_len:
        return ids, labels, False
    prompt_len, resp_len = response_start, n - response_start
    floor = max(1, int(max_len * response_share))
    keep_resp = min(resp_len, max(max_len - prompt_len, floor))
    keep_prompt = min(prompt_len, max_len - keep_resp)
    if keep_prompt == prompt_len:
        head = list(range(prompt_len))
    elif keep_first and keep_prompt >= 2:
        head = [0] + list(range(prompt_len - keep_prompt + 1, prompt_len))
    else:
        head = list(range(prompt_len - keep_prompt, prompt_len))
    keep = head + list(range(response_start, response_start + keep_resp))
    return [ids[i] for i in keep], [labels[i] for i in keep], keep_resp < resp_len


def tokenize_conversation(messages: Sequence[dict], template: ChatTemplate, *, max_seq_len: int,
                          loss_on: str = "assistant", response_share: float = 0.5) -> dict:
    """One conversation -> features {input_ids, attention_mask, labels, truncated, response_cut}.

    Example:
        >>> feat = tokenize_conversation([{"role": "user", "content": "hi"},
        ...                               {"role": "assistant", "content": "hello"}], tmpl, max_seq_len=512)  # doctest: +SKIP
    """
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    full_text = template.render(messages)
    ids = template.encode(full_text)
    spans = assistant_spans(messages, template, full_text, ids)
    if not spans:
        raise TemplateError(f"template {template.name!r} produced no assistant tokens for a conversation "
                            f"with roles {[m['role'] for m in messages]}")
    if loss_on == "all":
        labels = list(ids)
    else:
        labels = [IGNORE_INDEX] * len(ids)
        for start, end in spans:
            labels[start:end] = ids[start:end]
    special = set(getattr(template.tokenizer, "all_special_ids", []) or [])
    n_full = len(ids)
    ids, labels, cut = truncate_example(ids, labels, spans[-1][0], max_seq_len, response_share=response_share,
                                        keep_first=bool(ids) and ids[0] in special)
    truncated = n_full > max_seq_len
    labels[0] = IGNORE_INDEX  # never predicted; keeps packed examples from sharing labels
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels,
            "truncated": truncated, "response_cut": cut}


def tokenize_conversations(convs: Sequence[Sequence[dict]], template: ChatTemplate, *, max_seq_len: int,
                           loss_on: str = "assistant", response_share: float = 0.5) -> list[dict]:
    return [tokenize_conversation(c, template, max_seq_len=max_seq_len, loss_on=loss_on,
                                  response_share=response_share) for c in convs]

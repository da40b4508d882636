"""Chat SFT data formats: read records and turn every format into one shape, a list of messages.

Every record becomes a conversation ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``
with at least one assistant turn; the chat template (template.py) then renders and masks it.
Formats, detected from the first record's keys (or forced with `fmt=`):

  ============== ============================================== ==================================
  name           record keys                                    becomes
  ============== ============================================== ==================================
  messages       ``messages`` (role/content) or ShareGPT        the messages as given
                 ``conversations`` (from/value)
  prompt_        TRL ``prompt`` / ``completion`` (strings, or   user: prompt, assistant: completion
  completion     lists of messages in TRL's conversational form)
  alpaca         ``instruction`` / ``input`` (optional) /       user: instruction + blank line +
                 ``output``                                     input, assistant: output
  dschat         DeepSpeed-Chat ``prompt`` / ``chosen`` (/      Human:/Assistant: turns parsed
                 ``rejected``, ignored in SFT)                  out of prompt, assistant: chosen
  human_         ``text`` = "### Human: ... ### Assistant: ..." the ### Human/Assistant turns
  assistant      (Dolly open_qa in ../shared/data)
  gsm8k          ``question`` / ``answer``                      user: question, assistant: answer
  ============== ============================================== ==================================

DeepSpeed-Chat's ``--data_split`` (e.g. "2,4,4") splits one data set into portions for its three
training steps; `data_split_indices` reproduces its index arithmetic and seeded numpy shuffle
(utils/data/data_utils.py `get_raw_dataset_split_index`), so portion 0 here is the same subset
DeepSpeed-Chat's step 1 trains on for the same seed and size.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sparseft.load.readers import DataError, read_jsonl

FORMATS = ("auto", "messages", "prompt_completion", "alpaca", "dschat", "human_assistant", "gsm8k")
ROLES = ("system", "user", "assistant")
# ShareGPT / assorted role spellings -> our three roles
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant",
                 "user": "user", "assistant": "assistant", "system": "system"}
# "### Human:" / "### Assistant:" markers of the Dolly text format
_HASH_TURN_RE = re.compile(r"###\s*(Human|Assistant)\s*:\s?")
# DeepSpeed-Chat prompts: "\n\nHuman: ...\n\nAssistant:" (also tolerates a leading "###")
_DS_TURN_RE = re.compile(r"(?:^|(?<=\s))(?:###\s*)?(Human|Assistant)\s*:\s?")

Message = dict[str, str]


def read_chat_file(path: str | Path) -> list[dict]:
    """Raw records from a JSON lines file or a JSON file holding a list of objects.

    Raises:
        DataError: missing file, bad JSON, not objects, or no records.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        if isinstance(data, dict):  # {"data": [...]} / {"train": [...]} wrappers
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else data
        if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
            raise DataError(f"{path}: expected a JSON list of objects (or use JSON lines)")
        if not data:
            raise DataError(f"{path}: no records found")
        return data
    return read_jsonl(path)


def detect_format(record: dict) -> str:
    """Name of the format of one raw record (see the module table); DataError if none fits."""
    keys = set(record)
    if "messages" in keys or "conversations" in keys:
        return "messages"
    if "prompt" in keys and "chosen" in keys:
        return "dschat"
    if "prompt" in keys and "completion" in keys:
        return "prompt_completion"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "question" in keys and "answer" in keys:
        return "gsm8k"
    if "text" in keys and isinstance(record["text"], str) and _HASH_TURN_RE.search(record["text"]):
        return "human_assistant"
    raise DataError(f"cannot detect the chat format from keys {sorted(keys)}; expected one of: "
                    f"messages | prompt+completion | prompt+chosen | instruction+output | "
                    f"question+answer | text with '### Human:'/'### Assistant:' (or pass a format: "
                    f"{', '.join(FORMATS[1:])})")


def to_messages(record: dict, fmt: str, where: str = "record") -> list[Message]:
    """Convert one raw record of format `fmt` into a validated list of messages."""
    if fmt not in FORMATS[1:]:
        raise ValueError(f"unknown chat format {fmt!r}; valid choices: {', '.join(FORMATS)}")
    try:
        msgs = _CONVERTERS[fmt](record)
    except KeyError as e:
        raise DataError(f"{where}: format {fmt!r} needs field {e.args[0]!r}; record has "
                        f"{sorted(record)}") from None
    except (TypeError, AttributeError) as e:
        raise DataError(f"{where}: malformed {fmt!r} record: {e}") from None
    return validate_messages(msgs, where)


def records_to_conversations(records: Sequence[dict], fmt: str = "auto", *, source: str = "data"
                             ) -> tuple[list[list[Message]], str]:
    """Convert raw records; returns (conversations, the format used). `auto` looks at record 1."""
    if not records:
        raise DataError(f"{source}: no records")
    if fmt == "auto":
        fmt = detect_format(records[0])
    elif fmt not in FORMATS:
        raise ValueError(f"unknown chat format {fmt!r}; valid choices: {', '.join(FORMATS)}")
    convs = [to_messages(r, fmt, f"{source}: record {i + 1}") for i, r in enumerate(records)]
    return convs, fmt


def validate_messages(msgs: Any, where: str) -> list[Message]:
    """Roles known, contents strings, at least one non-empty assistant turn."""
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: expected a non-empty list of messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {i} must have 'role' and 'content'; got {m!r:.80}")
        role = _ROLE_ALIASES.get(str(m["role"]).lower())
        if role is None:
            raise DataError(f"{where}: message {i} has unknown role {m['role']!r}; valid roles: "
                            f"{', '.join(ROLES)} (or human/gpt)")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: message {i} content must be a string, got {type(m['content']).__name__}")
        out.append({"role": role, "content": m["content"]})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        raise DataError(f"{where}: no non-empty assistant message (nothing to train on)")
    return out


# ---- converters: raw record -> messages (validated afterwards) ------------------------------

def _from_messages(r: dict) -> list[Message]:
    if "messages" in r:
        return list(r["messages"])
    # ShareGPT: {"conversations": [{"from": "human", "value": "..."}, ...]}
    return [{"role": t.get("from", t.get("role")), "content": t.get("value", t.get("content"))}
            for t in r["conversations"]]


def _from_prompt_completion(r: dict) -> list[Message]:
    prompt, completion = r["prompt"], r["completion"]
    head = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    tail = list(completion) if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
    return head + tail


def _from_alpaca(r: dict) -> list[Message]:
    extra = (r.get("input") or "").strip()
    user = r["instruction"].strip() + (f"\n\n{extra}" if extra else "")
    msgs = [{"role": "system", "content": r["system"]}] if r.get("system") else []
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]


def _split_turns(text: str, pattern: re.Pattern) -> list[Message]:
    """'Human: a Assistant: b ...' -> messages; text before the first marker is a system turn."""
    pieces = pattern.split(text)  # [before, role1, text1, role2, text2, ...]
    msgs = [{"role": "system", "content": pieces[0].strip()}] if pieces[0].strip() else []
    for role, content in zip(pieces[1::2], pieces[2::2]):
        msgs.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return msgs


def _from_dschat(r: dict) -> list[Message]:
    prompt, chosen = r["prompt"], r["chosen"]
    turns = _split_turns(prompt, _DS_TURN_RE)
    if not any(m["role"] != "system" for m in turns):  # no markers: the prompt is one user turn
        turns = [{"role": "user", "content": prompt.strip()}]
    if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns = turns[:-1]  # the prompt ends with an open "Assistant:" that `chosen` completes
    return turns + [{"role": "assistant", "content": chosen.strip()}]


def _from_human_assistant(r: dict) -> list[Message]:
    return _split_turns(r["text"], _HASH_TURN_RE)


def _from_gsm8k(r: dict) -> list[Message]:
    return [{"role": "user", "content": r["question"].strip()},
            {"role": "assistant", "content": r["answer"].strip()}]


_CONVERTERS = {"messages": _from_messages, "prompt_completion": _from_prompt_completion,
               "alpaca": _from_alpaca, "dschat": _from_dschat,
               "human_assistant": _from_human_assistant, "gsm8k": _from_gsm8k}


# ---- DeepSpeed-Chat --data_split --------------------------------------------------------------

def parse_data_split(spec: str) -> list[float]:
    """'2,4,4' -> [2.0, 4.0, 4.0]; ValueError for anything else."""
    try:
        parts = [float(s) for s in spec.split(",")]
    except ValueError:
        raise ValueError(f"data_split must be comma-separated numbers like '2,4,4', got {spec!r}") from None
    if not parts or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"data_split needs non-negative weights with a positive sum, got {spec!r}")
    return parts


def data_split_indices(n: int, spec: str, index: int, seed: int) -> list[int]:
    """Indices of portion `index` of `n` records split by `spec`, as DeepSpeed-Chat computes them.

    DeepSpeed-Chat: normalise the weights, cumulate int(round(w * n)) boundaries, shift every
    boundary after the first by the rounding excess so the last equals n, then take that slice of
    a np.random.RandomState(seed) permutation of arange(n). Step 1 (SFT) uses portion 0.

    Example:
        >>> data_split_indices(10, "2,4,4", 0, seed=1234)  # doctest: +SKIP
        [6, 4]
    """
    weights = parse_data_split(spec)
    if not 0 <= index < len(weights):
        raise ValueError(f"data_split_index {index} out of range for {len(weights)} portions ({spec!r})")
    total = sum(weights)
    bounds = [0]
    for w in weights:
        bounds.append(bounds[-1] + int(round(w / total * float(n))))
    excess = bounds[-1] - n
    bounds = [bounds[0]] + [b - excess for b in bounds[1:]]
    assert bounds[-1] == n, bounds
    order = np.arange(n, dtype=np.uint32 if n < np.iinfo(np.uint32).max - 1 else np.int64)
    np.random.RandomState(seed=seed).shuffle(order)
    return order[bounds[index]:bounds[index + 1]].tolist()

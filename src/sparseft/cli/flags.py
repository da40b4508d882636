"""Command-line flags generated from config dataclasses, so flags, defaults and help cannot drift.

    g = parser.add_argument_group("training")
    add_config_flags(g, TrainConfig, ["epochs", "max_steps", "batch_size", "lr"])
    ...
    stage = config_values(args, TrainConfig, ["epochs", "max_steps", "batch_size", "lr"])

For each named field the flag is `--<field-with-dashes>` (plus `prefix`), its type and default are
the field's, and its help is the field's entry in the `Args:` table of the class docstring (the
class or a base class; `a / b: text` and `a, b: text` document several fields at once). Booleans
become `--x / --no-x`. HF / TRL names (`--learning_rate`, `--num_train_epochs`, ...) are added
as aliases where the concept exists (`HF_ALIASES`). Every generated action carries
`config_field = (cls, name)`; tests/cli/test_cli_vocabulary.py checks each flag's default against
the dataclass and that every documented field is either a flag or listed in `skip`.

The one exception: a field whose default depends on the method (`lr`, see
sparseft.train.defaults) can be given `default=None` through `defaults`; the command then
resolves the method's value itself and records it in the run's recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any

# HF Trainer / TRL argument names accepted next to ours (field name -> alias flags).
HF_ALIASES = {
    "model": ("--model_name_or_path",),
    "output_dir": ("--output_dir",),
    "lr": ("--learning_rate",),
    "epochs": ("--num_train_epochs",),
    "batch_size": ("--per_device_train_batch_size",),
    "eval_batch_size": ("--per_device_eval_batch_size",),
    "grad_accum": ("--gradient_accumulation_steps",),
    "max_steps": ("--max_steps",),
    "max_length": ("--max_length",),
    "warmup_ratio": ("--warmup_ratio",),
    "weight_decay": ("--weight_decay",),
    "max_grad_norm": ("--max_grad_norm",),
    "gradient_checkpointing": ("--gradient_checkpointing",),
    "seed": (),  # same spelling in HF
}

_NAMES = r"[a-z_][a-z0-9_]*(?:\s*(?:,|/)\s*[a-z_][a-z0-9_]*)*"
_ENTRY = re.compile(rf"^(?P<names>{_NAMES}):\s+(?P<text>.*)$")
_INLINE = re.compile(rf"(?<=[.;] )(?P<names>{_NAMES}):\s+")  # "a: text. b: text" on one line


def _split_names(names: str) -> list[str]:
    return [n.strip() for n in re.split(r"[,/]", names)]


def field_docs(cls: type) -> dict[str, str]:
    """{field: help} from the `Args:` tables of `cls` and its bases (the subclass's entry wins)."""
    out: dict[str, str] = {}
    known = {f.name for f in dataclasses.fields(cls)}
    for klass in reversed(cls.__mro__):
        doc = klass.__dict__.get("__doc__") or ""
        if "Args:" not in doc:
            continue
        body = doc.split("Args:", 1)[1]
        current: list[str] = []
        for raw in body.splitlines():
            line = raw.strip()
            if not line:
                current = []
                continue
            m = _ENTRY.match(line)
            if m:
                current, line = _split_names(m["names"]), m["text"]
                for n in current:
                    out[n] = ""
            elif not current:
                continue
            parts = _INLINE.split(line)  # [text, names, text, names, text ...]
            text = parts[0]
            for names, rest in zip(parts[1::2], parts[2::2]):
                if not set(_split_names(names)) <= known:  # "(deepspeed: ...)" inside a sentence
                    text += f"{names}: {rest}"
                    continue
                for n in current:
                    out[n] += " " + text
                current, text = _split_names(names), rest
                for n in current:
                    out[n] = ""
            for n in current:
                out[n] += " " + text
    return {k: v.strip().rstrip(";").strip() for k, v in out.items()}


def field_default(cls: type, name: str) -> Any:
    f = {x.name: x for x in dataclasses.fields(cls)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise ValueError(f"{cls.__name__}.{name} has no default: it cannot be an optional flag")


def _scalar_type(cls: type, name: str) -> type:
    """int / float / str / bool of a field (`X | None` -> X; `str | int` -> str, parsed by the config)."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] if (
        typing.get_origin(hint) in (typing.Union, types.UnionType)) else [hint]
    if len(args) == 1 and args[0] in (bool, int, float, str):
        return args[0]
    if all(a in (str, int) for a in args):
        return str
    raise ValueError(f"{cls.__name__}.{name} ({hint}) is not a scalar: set it with --set {name}=VALUE")


def flag_name(name: str, prefix: str = "") -> str:
    return "--" + prefix + name.replace("_", "-")


def add_config_flags(group, cls: type, names: list[str], *, prefix: str = "", defaults: dict | None = None,
                     help_extra: dict | None = None, aliases: dict | None = None) -> list[argparse.Action]:
    """Add one flag per field in `names` to `group` (dest = prefix + field, underscored).

    Args:
        defaults: per-field argparse defaults that differ from the dataclass (only None, meaning
            "the method's own default", is expected; see the module docstring).
        help_extra: text appended to a field's docstring help.
        aliases: extra alias flags per field (added to HF_ALIASES).
    """
    docs = field_docs(cls)
    actions = []
    for name in names:
        if name not in docs:
            raise ValueError(f"{cls.__name__}.{name} is not documented in the class docstring's Args: table")
        kind = _scalar_type(cls, name)
        default = (defaults or {}).get(name, field_default(cls, name))
        flags = [flag_name(name, prefix)]
        if not prefix:
            flags += [a for a in HF_ALIASES.get(name, ()) + tuple((aliases or {}).get(name, ())) if a not in flags]
        else:
            flags += list((aliases or {}).get(name, ()))
        text = docs[name] + ((" " + help_extra[name]) if help_extra and name in help_extra else "")
        text = text.replace("%", "%%")
        dest = (prefix + name).replace("-", "_")
        if kind is bool:  # --x / --no-x; an HF alias (--gradient_checkpointing) turns it on, unlisted
            action = group.add_argument(flags[0], dest=dest, action=argparse.BooleanOptionalAction, default=default,
                                        help=text)
            for alias in flags[1:]:
                group.add_argument(alias, dest=dest, action="store_true", default=argparse.SUPPRESS,
                                   help=argparse.SUPPRESS)
        else:
            action = group.add_argument(*flags, dest=dest, type=kind, default=default, help=text,
                                        metavar=name.upper())
        action.config_field = (cls, name)
        actions.append(action)
    return actions


def config_values(args: argparse.Namespace, cls: type, names: list[str], *, prefix: str = "",
                  changed_only: bool = False) -> dict:
    """{field: value} of the flags `add_config_flags` added (only those != the default if `changed_only`)."""
    out = {}
    for name in names:
        value = getattr(args, (prefix + name).replace("-", "_"))
        if value is None or (changed_only and value == field_default(cls, name)):
            continue
        out[name] = value
    return out

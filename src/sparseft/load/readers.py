"""Readers for the data files sparseft trains on: they return plain Python records (dicts).

What: one function per file family.
    read_conll          CoNLL column files (CoNLL-2003, WNUT-17) -> [{"tokens", "tags", "where"}]
    read_classification CSV / TSV / JSONL text classification   -> [{"text", "label", "where"}]
    read_clinc150       CLINC150 `data_full.json`-style files     -> [{"text", "label", "where"}]
    read_text           raw text for language modelling           -> str
    read_jsonl          generic JSON lines                         -> [dict]
    entity_types        sorted entity types seen in NER records

Why plain records: readers know nothing about torch, tokenizers or label ids, so they are fast,
easy to test, and the one place where file quirks are handled (IOB1 vs BIO tags, `-DOCSTART-`
lines in odd places, lone-TAB sentence breaks, headerless CSV). Tokenization lives in
`sparseft.load.tokenize`.

Errors: every problem with an input file raises `DataError` (a `ValueError`) whose message starts
with `path:LINE:` (or `path:` when no line applies) and says what is wrong, so a user can open the
file at the right place. Bad *arguments* (an unknown `scheme` or `fmt`) raise a plain `ValueError`
naming the valid choices. Records carry `where` ("path:LINE") so later stages (e.g. an unknown
label found during tokenization) can point back to the source line.

Files are decoded as UTF-8 (a leading BOM is ignored) and read whole: the data sets used here are
a few MB at most.

Example:
    >>> recs = read_conll("shared/data/conll2003/eng.train")   # IOB1 -> BIO on the fly
    >>> recs[0]["tokens"][:3], recs[0]["tags"][:3]
    (['EU', 'rejects', 'German'], ['B-ORG', 'O', 'B-MISC'])
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = [
    "DataError",
    "read_conll",
    "read_classification",
    "read_clinc150",
    "read_text",
    "read_jsonl",
    "entity_types",
    "CONLL_SCHEMES",
    "CLASSIFICATION_FORMATS",
]

PathLike = str | os.PathLike

CONLL_SCHEMES = ("bio", "keep")
CLASSIFICATION_FORMATS = ("auto", "csv", "tsv", "jsonl")
# Extension -> format for fmt="auto". ".json" means JSON *lines* here (one object per line).
_EXT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
# CoNLL columns are separated by spaces or tabs only: a token may contain other Unicode spaces.
_COL_SPLIT = re.compile(r"[ \t]+")
_SHOWN = 80  # characters of an offending line quoted in an error message


class DataError(ValueError):
    """A data file is missing, empty or malformed.

    The message always names the file, the 1-based line number where known, and what is wrong,
    e.g. ``data/train.conll:17: expected 4 columns, got 3: 'EU NNP I-ORG'``.
    """


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------

def _read_text_file(path: PathLike) -> str:
    """Whole file as str; OS and decoding problems become DataError naming the path (and line)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte offset {e.start})") from None


def _lines(text: str) -> list[str]:
    """Lines without their terminators; \\n, \\r\\n and \\r all end a line (as in text mode)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the terminator of the last line does not start a new one
    return lines


def _show(line: str) -> str:
    """A line quoted for an error message, shortened if long."""
    return repr(line if len(line) <= _SHOWN else line[:_SHOWN] + "...")


# ---------------------------------------------------------------------------------------------
# NER: CoNLL column files
# ---------------------------------------------------------------------------------------------

def _check_tag(tag: str, path: PathLike, lineno: int) -> None:
    if tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2):
        return
    raise DataError(f"{path}:{lineno}: invalid tag {tag!r}; expected 'O', 'B-TYPE' or 'I-TYPE'")


def _iob1_to_bio(tags: Sequence[str]) -> list[str]:
    """An I-X that starts an entity (after O, after another type, or first) becomes B-X.

    A no-op on valid BIO input, since there every I-X already follows B-X or I-X.
    """
    out: list[str] = []
    for tag in tags:
        if tag.startswith("I-"):
            prev = out[-1] if out else "O"
            if prev == "O" or prev[2:] != tag[2:]:
                tag = "B-" + tag[2:]
        out.append(tag)
    return out


def read_conll(path: PathLike, *, token_col: int = 0, tag_col: int = -1,
               scheme: str = "bio") -> list[dict]:
    """Read a CoNLL column file into one record per sentence.

    Handles CoNLL-2003 ('token POS chunk NER', space separated, IOB1 tags) and WNUT-17
    ('token<TAB>tag', BIO tags). Columns are split on runs of spaces/tabs. Blank and
    whitespace-only lines (WNUT-17 uses a lone TAB) end a sentence; '-DOCSTART-' lines may appear
    anywhere, are skipped, and also end the current sentence. The first token line fixes the
    column count (at least 2); every other token line must match it.

    Args:
        path: the file.
        token_col: column index of the token (negative counts from the end).
        tag_col: column index of the NER tag; the last column by default.
        scheme: 'bio' converts IOB1 to BIO (I-X starting an entity becomes B-X; a no-op on BIO
            input); 'keep' returns tags as written.

    Returns:
        ``[{"tokens": [...], "tags": [...], "where": "path:LINE"}]`` with LINE the sentence's
        first line (1-based).

    Raises:
        ValueError: unknown `scheme`.
        DataError: missing/unreadable file, inconsistent or too few columns, a tag that is not
            'O', 'B-X' or 'I-X', or no sentence at all.

    Example:
        >>> read_conll("wnut17train.conll", scheme="keep")[0]["tags"][:2]
        ['O', 'O']
    """
    if scheme not in CONLL_SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; valid choices: {', '.join(CONLL_SCHEMES)}")
    text = _read_text_file(path)

    records: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0  # first line of the current sentence
    n_cols = 0  # set by the first token line

    def flush() -> None:
        nonlocal tokens, tags
        if tokens:
            if scheme == "bio":
                tags = _iob1_to_bio(tags)
            records.append({"tokens": tokens, "tags": tags, "where": f"{path}:{start}"})
        tokens, tags = [], []

    for lineno, line in enumerate(_lines(text), start=1):
        stripped = line.strip(" \t")
        if not stripped:
            flush()
            continue
        fields = _COL_SPLIT.split(stripped)
        if fields[0] == "-DOCSTART-":
            flush()
            continue
        if n_cols == 0:
            if len(fields) < 2:
                raise DataError(f"{path}:{lineno}: expected at least 2 columns (token and tag), "
                                f"got {len(fields)}: {_show(line)}")
            for name, col in (("token_col", token_col), ("tag_col", tag_col)):
                if not -len(fields) <= col < len(fields):
                    raise DataError(f"{path}:{lineno}: {name}={col} is out of range for a file "
                                    f"with {len(fields)} columns")
            n_cols = len(fields)
        elif len(fields) != n_cols:
            raise DataError(f"{path}:{lineno}: expected {n_cols} columns, got {len(fields)}: "
                            f"{_show(line)}")
        tag = fields[tag_col]
        _check_tag(tag, path, lineno)
        if not tokens:
            start = lineno
        tokens.append(fields[token_col])
        tags.append(tag)
    flush()

    if not records:
        raise DataError(f"{path}: no sentences found")
    return records


def entity_types(records: Sequence[dict]) -> list[str]:
    """Sorted entity types (the part after 'B-'/'I-') in NER records' tags.

    Example:
        >>> entity_types([{"tokens": ["Ann", "left"], "tags": ["B-PER", "O"]}])
        ['PER']
    """
    return sorted({t[2:] for r in records for t in r["tags"] if t != "O"})


# ---------------------------------------------------------------------------------------------
# Generic JSON lines
# ---------------------------------------------------------------------------------------------

def _iter_jsonl(path: PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; DataError on bad JSON or a non-object."""
    text = _read_text_file(path)
    for lineno, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            hint, head = "", line.strip()
            if lineno == 1 and (head in ("[", "{") or head.startswith("[")):
                hint = " (this looks like one JSON document; expected one JSON object per line)"
            raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno}){hint}") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def read_jsonl(path: PathLike) -> list[dict]:
    """Read JSON lines: one object per non-blank line, returned as is (no 'where' added).

    Raises:
        DataError: missing file, a line that is not valid JSON or not an object (with its line
            number), or no object at all.

    Example:
        >>> read_jsonl("gsm8k/train.jsonl")[0].keys()
        dict_keys(['question', 'answer'])
    """
    records = [obj for _, obj in _iter_jsonl(path)]
    if not records:
        raise DataError(f"{path}: no records found (file is empty)")
    return records


# ---------------------------------------------------------------------------------------------
# Text classification: CSV / TSV / JSONL
# ---------------------------------------------------------------------------------------------

def _scalar_str(value: Any, path: PathLike, lineno: int, key: str) -> str:
    """A JSON field as str: strings as is, numbers/bools via str(); containers are an error."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise DataError(f"{path}:{lineno}: field {key!r} must be a string or number, "
                        f"got {type(value).__name__}")
    return value if isinstance(value, str) else str(value)


def _make_record(fields: dict[str, Any], text_cols: list[str], label_col: str,
                 path: PathLike, lineno: int) -> dict:
    parts = [_scalar_str(fields[c], path, lineno, c).strip() for c in text_cols]
    text = " ".join(p for p in parts if p)
    if not text:
        raise DataError(f"{path}:{lineno}: empty text in column(s) {', '.join(text_cols)}")
    label = _scalar_str(fields[label_col], path, lineno, label_col).strip()
    if not label:
        raise DataError(f"{path}:{lineno}: empty label in column {label_col!r}")
    return {"text": text, "label": label, "where": f"{path}:{lineno}"}


def _missing_columns(path: PathLike, wanted: list[str], available: Sequence[str],
                     lineno: int | None = None) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        where = f"{path}:{lineno}" if lineno is not None else f"{path}"
        noun = "column" if len(missing) == 1 else "columns"
        raise DataError(f"{where}: {noun} {', '.join(repr(c) for c in missing)} not found; "
                        f"available columns: {', '.join(repr(c) for c in available)}")


def _read_delimited(path: PathLike, delimiter: str, text_cols: list[str], label_col: str,
                    columns: list[str] | None) -> list[dict]:
    text = _read_text_file(path)
    # newline="" keeps line ends untouched so the csv module handles newlines inside quotes.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    names: list[str] | None = list(columns) if columns is not None else None
    header_line = 0
    if names is not None:
        _missing_columns(path, text_cols + [label_col], names)
    records: list[dict] = []
    while True:
        lineno = reader.line_num + 1  # first line of the next row (rows may span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(f"{path}:{lineno}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} "
                            f"row: {e}") from None
        if not row or all(not f.strip() for f in row):
            continue  # blank line
        if names is None:
            names = [f.strip() for f in row]
            header_line = lineno
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise DataError(f"{path}:{lineno}: duplicate column name(s) in header: "
                                f"{', '.join(map(repr, dupes))}")
            _missing_columns(path, text_cols + [label_col], names, lineno)
            continue
        if len(row) != len(names):
            raise DataError(f"{path}:{lineno}: expected {len(names)} fields "
                            f"({', '.join(names)}), got {len(row)}")
        records.append(_make_record(dict(zip(names, row)), text_cols, label_col, path, lineno))
    if not records:
        what = "only a header" if header_line else "no rows"
        raise DataError(f"{path}: no records found (file has {what})")
    return records


def read_classification(path: PathLike, *, text_col: str | list[str] = "text",
                        label_col: str = "label", fmt: str = "auto",
                        columns: list[str] | None = None) -> list[dict]:
    """Read a text classification file (CSV, TSV or JSON lines).

    Args:
        path: the file.
        text_col: the text column, or several whose stripped values are joined with ' '
            (empty parts are skipped), e.g. ``["title", "description"]``.
        label_col: the label column; labels are always returned as str ('1', not 1).
        fmt: 'auto' (by extension: .csv, .tsv, .jsonl/.json/.ndjson as JSON lines), 'csv',
            'tsv' or 'jsonl'.
        columns: for CSV/TSV without a header row: the column names, in order. With `columns`
            the first row is data. Ignored for JSONL.

    Returns:
        ``[{"text": str, "label": str, "where": "path:LINE"}]`` (LINE: a row's first line).

    Raises:
        ValueError: unknown `fmt`.
        DataError: missing file, extension that `auto` cannot map, missing column (the message
            lists the available ones), wrong field count, bad JSON, empty text or label, or no
            records.

    Example:
        >>> recs = read_classification("ag_news/train.csv", columns=["label", "title", "desc"],
        ...                            text_col=["title", "desc"])
        >>> recs[0]["label"]
        '3'
    """
    if fmt not in CLASSIFICATION_FORMATS:
        raise ValueError(f"unknown fmt {fmt!r}; valid choices: {', '.join(CLASSIFICATION_FORMATS)}")
    text_cols = [text_col] if isinstance(text_col, str) else list(text_col)
    if not text_cols:
        raise ValueError("text_col must name at least one column")
    if fmt == "auto":
        ext = Path(path).suffix.lower()
        if ext not in _EXT_FORMATS:
            raise DataError(f"{path}: cannot infer the format from extension {ext!r}; pass "
                            f"fmt='csv', 'tsv' or 'jsonl'")
        fmt = _EXT_FORMATS[ext]
    if fmt == "csv":
        return _read_delimited(path, ",", text_cols, label_col, columns)
    if fmt == "tsv":
        return _read_delimited(path, "\t", text_cols, label_col, columns)

    records = []
    for lineno, obj in _iter_jsonl(path):
        _missing_columns(path, text_cols + [label_col], list(obj), lineno)
        records.append(_make_record(obj, text_cols, label_col, path, lineno))
    if not records:
        raise DataError(f"{path}: no records found (file is empty)")
    return records


# ---------------------------------------------------------------------------------------------
# CLINC150 (OOS-eval)
# ---------------------------------------------------------------------------------------------

CLINC150_SPLITS = ("train", "val", "test")


def _clinc_items(data: dict, key: str, path: PathLike) -> list[dict]:
    items = data[key]
    if not isinstance(items, list):
        raise DataError(f"{path}: {key!r} must be a list of [utterance, intent] pairs, "
                        f"got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        where = f"{path}:{key}[{i}]"
        if (not isinstance(item, list) or len(item) != 2
                or not all(isinstance(x, str) for x in item)):
            raise DataError(f"{where}: expected [utterance, intent] (two strings), got "
                            f"{_show(json.dumps(item))}")
        text, label = item[0].strip(), item[1].strip()
        if not text or not label:
            raise DataError(f"{where}: empty {'utterance' if not text else 'intent'}")
        out.append({"text": text, "label": label, "where": where})
    return out


def read_clinc150(path: PathLike, *, split: str = "train", include_oos: bool = True) -> list[dict]:
    """Read one split of a CLINC150 `data_full.json`-style file.

    The file is one JSON object: ``{"train": [[utterance, intent], ...], "val": [...],
    "oos_train": [...], "oos_val": [...]}`` and possibly "test"/"oos_test".

    Args:
        path: the file.
        split: 'train', 'val' or 'test'.
        include_oos: also return the out-of-scope items of 'oos_<split>' (label 'oos') when that
            key exists; when False, items labelled 'oos' are dropped from the split too.

    Returns:
        Records shaped like `read_classification`'s; `where` is ``path:KEY[INDEX]`` since JSON
        items have no useful line number.

    Raises:
        DataError: missing file, bad JSON, not an object, `split` not in the file (the message
            lists the available keys) or a malformed item.

    Example:
        >>> len(read_clinc150("clinc150/data_full_train_val.json", split="val"))
        3100
    """
    text = _read_text_file(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with keys like 'train', 'val', "
                        f"'oos_train'; got {type(data).__name__}")
    available = ", ".join(repr(k) for k in data)
    if split not in CLINC150_SPLITS or split not in data:
        raise DataError(f"{path}: split {split!r} not available; valid splits are "
                        f"{', '.join(CLINC150_SPLITS)} and the file has keys: {available}")
    records = _clinc_items(data, split, path)
    if include_oos:
        if f"oos_{split}" in data:
            records += _clinc_items(data, f"oos_{split}", path)
    else:
        records = [r for r in records if r["label"] != "oos"]
    if not records:
        raise DataError(f"{path}: split {split!r} has no items")
    return records


# ---------------------------------------------------------------------------------------------
# Raw text
# ---------------------------------------------------------------------------------------------

def read_text(path: PathLike) -> str:
    """Whole file as text for language modelling (returned unchanged).

    Raises:
        DataError: missing/unreadable file, invalid UTF-8, or a file with only whitespace.

    Example:
        >>> read_text("tiny_shakespeare/input.txt")[:14]
        'First Citizen:'
    """
    text = _read_text_file(path)
    if not text.strip():
        raise DataError(f"{path}: file is empty (no text)")
    return text

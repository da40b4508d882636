"""Tests for the synthetic quickstart NER data: determinism, format, counts and the
train/dev split of entity names (dev names never appear in train)."""

from __future__ import annotations

import random

import pytest

from sparseft.demo.toy_ner import MAX_LEN, MIN_LEN, toy_ner_sentences, write_toy_ner
from sparseft.load.readers import entity_types, read_conll


def _entities(records: list[dict]) -> set[tuple[str, str]]:
    """(type, surface string) of every entity span in BIO records."""
    out = set()
    for r in records:
        span: list[str] = []
        typ = ""
        for tok, tag in zip(r["tokens"] + ["<end>"], r["tags"] + ["O"]):
            if span and not tag.startswith("I-"):
                out.add((typ, " ".join(span)))
                span = []
            if tag.startswith("B-"):
                span, typ = [tok], tag[2:]
            elif tag.startswith("I-"):
                assert span and tag[2:] == typ, f"I- tag without a matching B- in {r}"
                span.append(tok)
    return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "nested" / "dir"  # created by the writer
    train, dev = write_toy_ner(out, seed=0)
    return train, dev


def test_paths_and_format(toy):
    train, dev = toy
    assert (train.name, dev.name) == ("train.conll", "dev.conll")
    assert train.parent == dev.parent
    text = train.read_text(encoding="utf-8")
    assert text.endswith("\n") and not text.endswith("\n\n")
    for line in text.split("\n")[:-1]:
        assert line == "" or line.count("\t") == 1, repr(line)
    # no temporary files left behind by the atomic writes
    assert sorted(p.name for p in train.parent.iterdir()) == ["dev.conll", "train.conll"]


def test_readable_counts_lengths_and_types(toy):
    train, dev = toy
    tr, dv = read_conll(train, scheme="keep"), read_conll(dev, scheme="keep")
    assert (len(tr), len(dv)) == (800, 200)
    assert read_conll(train) == tr  # already valid BIO
    for recs in (tr, dv):
        assert entity_types(recs) == ["LOC", "MISC", "ORG", "PER"]
        lengths = [len(r["tokens"]) for r in recs]
        assert MIN_LEN <= min(lengths) and max(lengths) <= MAX_LEN
        n_no_entity = sum(all(t == "O" for t in r["tags"]) for r in recs)
        assert 0 < n_no_entity < len(recs) // 3
        # plenty of O tokens, and punctuation as separate tokens
        tags = [t for r in recs for t in r["tags"]]
        assert tags.count("O") > len(tags) / 2
        assert any(tok in {".", ","} for r in recs for tok in r["tokens"])
    # multi-token entities of every type exist in train
    multi = {typ for typ, s in _entities(tr) if " " in s}
    assert multi == {"LOC", "MISC", "ORG", "PER"}


def test_adjacent_entities_of_different_types(toy):
    tr = read_conll(toy[0])
    pairs = {(a[2:], b[2:]) for r in tr for a, b in zip(r["tags"], r["tags"][1:])
             if a != "O" and b.startswith("B-") and a[2:] != b[2:]}
    assert pairs  # e.g. ('MISC', 'PER') from "German Lars Petrov"


def test_dev_entities_are_unseen_in_train(toy):
    tr, dv = read_conll(toy[0]), read_conll(toy[1])
    train_strings = {s for _, s in _entities(tr)}
    dev_strings = {s for _, s in _entities(dv)}
    assert dev_strings and not (dev_strings & train_strings)


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path, toy):
    a = write_toy_ner(tmp_path / "a", seed=0)
    b = write_toy_ner(tmp_path / "b", seed=1)
    for p_toy, p_a, p_b in zip(toy, a, b):
        assert p_a.read_bytes() == p_toy.read_bytes()
        assert p_b.read_bytes() != p_toy.read_bytes()


def test_rewrite_replaces_files_and_dev_ignores_n_train(tmp_path):
    out = tmp_path / "t"
    train, dev = write_toy_ner(out, n_train=30, n_dev=10, seed=3)
    dev_before = dev.read_bytes()
    train2, dev2 = write_toy_ner(out, n_train=50, n_dev=10, seed=3)
    assert len(read_conll(train2)) == 50
    assert dev2.read_bytes() == dev_before


def test_does_not_use_global_rng(tmp_path):
    random.seed(123)
    state = random.getstate()
    write_toy_ner(tmp_path, n_train=5, n_dev=5)
    assert random.getstate() == state


def test_sentences_in_memory_and_bad_args(tmp_path):
    sents = toy_ner_sentences(5, split="dev", rng=random.Random(0))
    assert len(sents) == 5 and all(len(toks) == len(tags) for toks, tags in sents)
    with pytest.raises(ValueError, match="train, dev"):
        toy_ner_sentences(1, split="test", rng=random.Random(0))
    with pytest.raises(ValueError, match="n_train"):
        write_toy_ner(tmp_path, n_train=0)

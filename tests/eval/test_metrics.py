import math

import pytest

from sparseft.eval.metrics import classification_scores, ner_scores, perplexity


def test_ner_scores_strict_entity_level():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O"]]  # wrong type; I- without B- is no entity
    s = ner_scores(gold, pred)
    assert s["precision"] == pytest.approx(1 / 2)
    assert s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(0.4)
    assert s["per_type"]["PER"]["f1"] == 1.0 and s["per_type"]["LOC"]["support"] == 1
    assert s["per_type"]["ORG"]["recall"] == 0.0


def test_ner_scores_boundary_errors_count_as_misses():
    s = ner_scores([["B-PER", "I-PER"]], [["B-PER", "O"]])
    assert s["f1"] == 0.0


def test_ner_scores_length_mismatch():
    with pytest.raises(ValueError, match="sentence 0"):
        ner_scores([["O"]], [["O", "O"]])


def test_classification_accuracy_and_macro_f1():
    s = classification_scores([0, 0, 1, 2], [0, 1, 1, 2])
    assert s["accuracy"] == 0.75
    # per class F1: 0 -> 2/3, 1 -> 2/3, 2 -> 1
    assert s["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    with pytest.raises(ValueError):
        classification_scores([], [])


def test_perplexity():
    assert perplexity(math.log(10) * 5, 5) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        perplexity(1.0, 0)

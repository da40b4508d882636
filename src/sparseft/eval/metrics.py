"""Task metrics computed from plain label sequences (no model code here).

NER uses seqeval in strict mode with the IOB2 (BIO) scheme: an entity counts only when its type
and both boundaries match, and ill-formed predicted spans (an I- with no B-) are not entities.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence


def ner_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """Entity-level micro precision/recall/F1 and the same per entity type.

    Returns {"precision", "recall", "f1", "per_type": {TYPE: {"precision","recall","f1","support"}}}.
    """
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but pred has {len(pred)}")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: gold has {len(g)} tags, pred has {len(p)}")
    report = classification_report(list(map(list, gold)), list(map(list, pred)), mode="strict",
                                   scheme=IOB2, output_dict=True, zero_division=0)
    per_type = {k: {"precision": v["precision"], "recall": v["recall"], "f1": v["f1-score"],
                    "support": int(v["support"])}
                for k, v in report.items() if not k.endswith(" avg")}
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    return {"precision": micro["precision"], "recall": micro["recall"], "f1": micro["f1-score"],
            "per_type": per_type}


def classification_scores(gold: Sequence[int], pred: Sequence[int], n_labels: int | None = None) -> dict:
    """Accuracy and macro-F1 (mean of per-class F1 over classes present in gold or pred)."""
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} labels but pred has {len(pred)}")
    if not gold:
        raise ValueError("no examples to score")
    correct = sum(int(g == p) for g, p in zip(gold, pred))
    tp, fp, fn = Counter(), Counter(), Counter()
    for g, p in zip(gold, pred):
        if g == p:
            tp[g] += 1
        else:
            fp[p] += 1
            fn[g] += 1
    classes = set(gold) | set(pred)
    f1s = []
    for c in classes:
        denom = 2 * tp[c] + fp[c] + fn[c]
        f1s.append(2 * tp[c] / denom if denom else 0.0)
    return {"accuracy": correct / len(gold), "macro_f1": sum(f1s) / len(f1s)}


def perplexity(total_nll: float, n_tokens: int) -> float:
    if n_tokens <= 0:
        raise ValueError("no tokens to score")
    return math.exp(min(total_nll / n_tokens, 700.0))

"""VQA scores: normalised exact match (closed questions) and token recall / F1 (open questions).

Normalisation rule (``normalize_answer``), applied to prediction and reference alike:
1. lowercase;
2. every punctuation character (Unicode category P*) becomes a space;
3. the English articles "a", "an", "the" are dropped as whole words;
4. whitespace runs collapse to one space, ends stripped.
So "The Liver." == "liver" but "left lung" != "lung".

Tokens are the words of the normalised text. Overlap counts repeated words at most as often
as they occur in both (bag of words), as in SQuAD's F1.
"""

from __future__ import annotations

import unicodedata
from collections import Counter

_ARTICLES = {"a", "an", "the"}


def _strip_punctuation(text: str) -> str:
    return "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)


def answer_tokens(text: str) -> list[str]:
    """The words of an answer after normalisation.

    >>> answer_tokens("The left-lung, an opacity!")
    ['left', 'lung', 'opacity']
    """
    words = _strip_punctuation(text.lower()).split()
    return [w for w in words if w not in _ARTICLES]


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation to spaces, articles dropped, whitespace collapsed.

    >>> normalize_answer("  The Liver. ")
    'liver'
    """
    return " ".join(answer_tokens(text))


def exact_match(pred: str, ref: str) -> float:
    """1.0 when the normalised answers are equal, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(ref))


def _overlap(pred: str, ref: str) -> tuple[int, int, int]:
    p, r = answer_tokens(pred), answer_tokens(ref)
    common = Counter(p) & Counter(r)
    return sum(common.values()), len(p), len(r)


def token_recall(pred: str, ref: str) -> float:
    """Share of the reference's words found in the prediction; 1.0 when the reference is empty
    and the prediction too, 0.0 when only the reference is empty.

    >>> token_recall("a mass in the left lung", "left lung")
    1.0
    """
    common, n_pred, n_ref = _overlap(pred, ref)
    if n_ref == 0:
        return float(n_pred == 0)
    return common / n_ref


def token_f1(pred: str, ref: str) -> float:
    """Harmonic mean of token precision and recall; both empty = 1.0, one empty = 0.0.

    >>> round(token_f1("mass in left lung", "left lung"), 4)  # P = 2/4, R = 2/2
    0.6667
    """
    common, n_pred, n_ref = _overlap(pred, ref)
    if n_pred == 0 or n_ref == 0:
        return float(n_pred == n_ref)
    if common == 0:
        return 0.0
    precision, recall = common / n_pred, common / n_ref
    return 2 * precision * recall / (precision + recall)


"""Turn model text into what the metrics need: a closed choice (yes/no, option letter, text).

Reasoning vs answer, [SEG] count, report sections and box markup are read by
``citrus_v.data.answers`` (one home, shared with inference); boxes are parsed by
``citrus_v.data.boxes.parse_boxes``, and the evaluator takes them from ``Prediction.boxes``,
already in original pixels.
"""

from __future__ import annotations

import re

from citrus_v.eval.metrics.vqa import answer_tokens, normalize_answer

# --- closed questions ---------------------------------------------------------------------
_YES_NO = {"yes", "no"}
# a lone option letter: "B", "(B)", "B.", "B)", "B:" at the start, followed by text or nothing
_LEADING_LETTER = re.compile(r"^\s*\(?([A-Ja-j])(?:\)|\.|:|\s*$)")
# "answer is B", "answer: (B)", "option B", "choice: b"
_NAMED_LETTER = re.compile(r"\b(?:answer(?:\s+is)?|option|choice)\s*[:：]?\s*\(?([A-Ja-j])\b\)?", re.I)


def choice_kind(reference: str) -> str:
    """What a closed reference is: "yes_no", "letter" or "text".

    >>> [choice_kind(r) for r in ("Yes", "(C) pleural effusion", "left lung")]
    ['yes_no', 'letter', 'text']
    """
    if normalize_answer(reference) in _YES_NO:
        return "yes_no"
    if _LEADING_LETTER.match(reference):
        return "letter"
    return "text"


def extract_choice(text: str, kind: str) -> str | None:
    """The choice a free-text answer makes, of the given kind; None when it makes none.

    yes_no: the first "yes" or "no" word of the normalised answer (so "Yes, there is a
    fracture." is "yes"). letter: a leading option letter, or one named after "answer",
    "option" or "choice"; returned upper-case. text: the normalised answer.

    >>> extract_choice("Yes, a fracture is seen.", "yes_no")
    'yes'
    >>> extract_choice("The answer is (b).", "letter")
    'B'
    >>> extract_choice("A large mass", "letter") is None  # an article, not an option
    True
    """
    if kind == "yes_no":
        return next((w for w in answer_tokens(text) if w in _YES_NO), None)
    if kind == "letter":
        m = _LEADING_LETTER.match(text) or _NAMED_LETTER.search(text)
        return m.group(1).upper() if m else None
    if kind == "text":
        return normalize_answer(text)
    raise ValueError(f"unknown choice kind {kind!r}; expected 'yes_no', 'letter' or 'text'")


def closed_answer_correct(pred: str, reference: str) -> float:
    """1.0 when the prediction makes the reference's choice (see ``extract_choice``), else 0.0.

    >>> closed_answer_correct("No.", "no"), closed_answer_correct("B. Effusion", "(B)")
    (1.0, 1.0)
    """
    kind = choice_kind(reference)
    want = extract_choice(reference, kind)
    got = extract_choice(pred, kind)
    return float(got is not None and got == want)


def is_closed_reference(reference: str) -> bool:
    """Whether a reference is a yes/no or option-letter answer (used to route CoT samples)."""
    return choice_kind(reference) != "text"

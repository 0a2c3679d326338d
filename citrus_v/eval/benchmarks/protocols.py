"""How each benchmark asks and scores: the written-down protocols (docs/evaluation.md mirrors this).

multiple_choice (PMC-VQA, MedXpertQA, MedQA-USMLE, MedMCQA)
    prompt: the question, the options one per line as ``A. text`` (left out when the benchmark's
    question already lists them, as MedXpertQA's does), then ``MC_INSTRUCTION``.
    extraction (``extract_option``), first rule that gives an offered letter wins:
    1. a leading letter: ``B``, ``(B)``, ``B.``, ``B)``, ``B:`` at the start of the answer;
    2. a named letter: ``answer is B``, ``answer: (B)``, ``option B``, ``choice b``;
    3. option text: the normalised answer equals one option's normalised text;
    4. option text: exactly one option's normalised text occurs in the answer as whole words.
    A letter that is not offered does not count (rules continue). No option found = wrong, and the
    count of such answers is reported beside the accuracy (``no_option``).
    aggregation: accuracy, mean over questions.

yes_no_maybe (PubMedQA, reasoning-required)
    prompt: the contexts, the question, ``YNM_INSTRUCTION``. extraction: the first of the words
    yes / no / maybe in the normalised answer; none = wrong. aggregation: accuracy over questions.

vqa (VQA-RAD, SLAKE, PathVQA): the existing ``citrus-v eval`` rules (citrus_v/eval/parsing.py and
    metrics/vqa.py): closed questions are right when the answer makes the reference's choice
    (yes/no: the first yes/no word; else normalised exact match); open questions score token recall
    (share of the reference's words in the answer). Reported: closed accuracy, open recall, and
    ``all`` = the mean over every question of its closed 0/1 or open recall.

Scorers whose official definition needs a model not installable here (RaTE: the RaTE-NER model and
its synonym embeddings) are pluggable (``ReportScorer``); without one the cell says "not computed".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from citrus_v.eval.metrics.vqa import answer_tokens, normalize_answer
from citrus_v.eval.parsing import extract_choice

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
YNM_INSTRUCTION = "Answer with yes, no or maybe."

# (predictions, references) -> one corpus score, or None when it cannot be computed
ReportScorer = Callable[[Sequence[str], Sequence[str]], float]


def multiple_choice_prompt(question: str, options: dict[str, str] | None) -> str:
    """The question, its options as ``A. text`` lines (None: the question lists them), the instruction.

    >>> print(multiple_choice_prompt("Which organ?", {"A": "liver", "B": "lung"}))
    Which organ?
    A. liver
    B. lung
    Answer with the option's letter from the given choices directly.
    """
    lines = [question.strip()]
    if options:
        lines += [f"{k}. {v}" for k, v in options.items()]
    return "\n".join(lines + [MC_INSTRUCTION])


def yes_no_maybe_prompt(question: str, context: str) -> str:
    return f"Context:\n{context.strip()}\nQuestion: {question.strip()}\n{YNM_INSTRUCTION}"


def _contains_words(haystack: str, needle: str) -> bool:
    return bool(needle) and re.search(rf"(?<!\S){re.escape(needle)}(?!\S)", haystack) is not None


def extract_option(answer: str, options: dict[str, str]) -> str | None:
    """The offered letter the answer picks (rules in the module docstring), or None.

    >>> opts = {"A": "CT scan", "B": "MRI", "C": "X-ray"}
    >>> [extract_option(a, opts) for a in ("(B)", "The answer is c.", "mri", "It is an X-ray.", "E.", "no idea")]
    ['B', 'C', 'B', 'C', None, None]
    """
    letter = extract_choice(answer, "letter")
    if letter in options:
        return letter
    said = normalize_answer(answer)
    texts = {k: normalize_answer(v) for k, v in options.items()}
    exact = [k for k, t in texts.items() if t and t == said]
    if len(exact) == 1:
        return exact[0]
    inside = [k for k, t in texts.items() if _contains_words(said, t)]
    return inside[0] if len(inside) == 1 else None


def score_multiple_choice(answer: str, reference: str, options: dict[str, str]) -> tuple[float, bool]:
    """(1.0 if the extracted letter is the reference's else 0.0, whether any option was found)."""
    got = extract_option(answer, options)
    return float(got == reference.strip().upper()), got is not None


def extract_yes_no_maybe(answer: str) -> str | None:
    """The first of yes / no / maybe among the answer's normalised words, or None.

    >>> extract_yes_no_maybe("Maybe; the evidence is weak."), extract_yes_no_maybe("unclear")
    ('maybe', None)
    """
    return next((w for w in answer_tokens(answer) if w in ("yes", "no", "maybe")), None)


def score_yes_no_maybe(answer: str, reference: str) -> tuple[float, bool]:
    got = extract_yes_no_maybe(answer)
    return float(got == reference.strip().lower()), got is not None

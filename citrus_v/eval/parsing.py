"""Turn model text into what the metrics need: answer vs reasoning, a closed choice, [SEG] count,
and the Findings / Impression parts of a report.

Boxes are parsed by ``citrus_v.data.boxes.parse_boxes`` (one parser for the whole package);
the evaluator takes them from ``Prediction.boxes``, already in original pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from citrus_v.eval.metrics.vqa import answer_tokens, normalize_answer

SEG_TOKEN = "[SEG]"

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.S | re.I)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S | re.I)
_TAGS = re.compile(r"</?(?:think|answer)>", re.I)


@dataclass(frozen=True)
class SplitText:
    reasoning: str | None  # the <think> part, None when the text has none
    answer: str  # the <answer> part, or the text after </think>, or the whole text


def split_think_answer(text: str) -> SplitText:
    """Split chain-of-thought text into reasoning and answer.

    Rules, in order: the text inside ``<answer>`` (an unclosed tag runs to the end);
    else the text after ``</think>``; else the whole text. Stray tags are removed.

    >>> split_think_answer("<think>round opacity</think><answer> Yes </answer>")
    SplitText(reasoning='round opacity', answer='Yes')
    >>> split_think_answer("no tags").answer
    'no tags'
    """
    think = _THINK.search(text)
    reasoning = think.group(1).strip() if think else None
    ans = _ANSWER.search(text)
    if ans:
        answer = ans.group(1)
    elif think and re.search(r"</think>", text, re.I):
        answer = text[re.search(r"</think>", text, re.I).end():]
    elif think:
        answer = ""  # the model stopped while still thinking
    else:
        answer = text
    return SplitText(reasoning, _TAGS.sub("", answer).strip())


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


# --- segmentation and reports ------------------------------------------------------------
def count_seg_tokens(text: str) -> int:
    """How many ``[SEG]`` tokens a text holds.

    >>> count_seg_tokens("liver [SEG] and spleen [SEG].")
    2
    """
    return text.count(SEG_TOKEN)


_FINDINGS = re.compile(r"\bfindings\s*:", re.I)
_IMPRESSION = re.compile(r"\bimpressions?\s*:", re.I)


def split_report(text: str) -> tuple[str, str]:
    """(findings, impression) of a report written "Findings: ... Impression: ...".

    Without an "Impression:" heading everything after "Findings:" (or the whole text) is
    findings; without a "Findings:" heading the text before "Impression:" is findings.

    >>> split_report("Findings: clear lungs. Impression: normal chest.")
    ('clear lungs.', 'normal chest.')
    >>> split_report("Normal study.")
    ('Normal study.', '')
    """
    imp = _IMPRESSION.search(text)
    body, impression = (text[: imp.start()], text[imp.end():]) if imp else (text, "")
    fnd = _FINDINGS.search(body)
    findings = body[fnd.end():] if fnd else body
    return findings.strip(), impression.strip()


# box markup in free text: fenced JSON lists, bare bbox_2d lists, the <boxes> placeholder of a
# reference, the legacy <|box_start|>..<|box_end|> and <bbox>..</bbox> forms
_BOX_MARKUP = re.compile(
    r"```(?:json)?\s*\[.*?\]\s*```"
    r"|\[\s*\{[^\[\]]*?\"bbox_2d\".*?\}\s*\]"
    r"|<boxes>"
    r"|<\|box_start\|>.*?<\|box_end\|>"
    r"|<bbox>.*?</bbox>",
    re.S,
)


def strip_box_markup(text: str) -> str:
    """``text`` without box markup, whitespace collapsed: report prose is scored on its words;
    the boxes it cites are coordinates, scored by the detection metrics instead.

    >>> strip_box_markup('Findings: a lesion at ```json\\n[{"bbox_2d": [1, 2, 3, 4], "label": "x"}]\\n```. Impression: x.')
    'Findings: a lesion at . Impression: x.'
    >>> strip_box_markup("Findings: a lesion at <boxes>. Impression: x.")
    'Findings: a lesion at . Impression: x.'
    """
    return " ".join(_BOX_MARKUP.sub("", text).split())

"""Turning generated text into the parts a user sees: reasoning, answer, structured report.

The reading rules are ``citrus_v.data.answers``'s (evaluation scores with the same ones).

Pure string functions (no model, no tokenizer), so they are tested on hand-written text.
"""

from __future__ import annotations

from citrus_v.data.answers import has_report_headings, split_report, split_think_answer, strip_box_markup
from citrus_v.infer.types import Box, Report

# ChatML / vision control tokens: never part of what the user reads. "[SEG]" and box markup
# stay in the answer: "[SEG]" marks where each mask belongs (the i-th [SEG] <-> the i-th mask).
CONTROL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def strip_control_tokens(text: str) -> str:
    """Remove ChatML/vision control tokens (keeps ``[SEG]`` and box markup)."""
    for token in CONTROL_TOKENS:
        text = text.replace(token, "")
    return text.strip()


def split_reasoning(text: str) -> tuple[str | None, str]:
    """``(reasoning, answer)`` from generated text, control tokens removed.

    The rules are ``data.answers.split_think_answer``'s (the evaluator scores with the same
    split): the ``<answer>`` part, else the text after ``</think>``, else the whole text.

    >>> split_reasoning("<think>round, dense</think><answer>a nodule</answer><|im_end|>")
    ('round, dense', 'a nodule')
    >>> split_reasoning("Sure, it is [SEG].<|im_end|>")
    (None, 'Sure, it is [SEG].')
    """
    parts = split_think_answer(strip_control_tokens(text))
    return parts.reasoning, parts.answer


def parse_report(answer: str, boxes: list[Box]) -> Report | None:
    """A :class:`Report` when the answer has "Findings:" and/or "Impression:", else None.

    ``boxes`` are the boxes parsed from the same answer (original pixels): a report cites
    them per region, so they travel with it. Box markup is removed from the prose.

    >>> r = parse_report("Findings: clear lungs. Impression: normal.", [])
    >>> (r.findings, r.impression)
    ('clear lungs.', 'normal.')
    """
    if not has_report_headings(answer):
        return None
    findings, impression = split_report(answer)
    prose = [strip_box_markup(part, keep_newlines=True) for part in (findings, impression)]
    return Report(findings=prose[0], impression=prose[1], boxes=list(boxes))

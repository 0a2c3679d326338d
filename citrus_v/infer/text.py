"""Turning generated text into the parts a user sees: reasoning, answer, structured report.

Pure string functions (no model, no tokenizer), so they are tested on hand-written text.
"""

from __future__ import annotations

import re

from citrus_v.eval.parsing import split_report, split_think_answer
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

# a report is recognised by its headings; splitting is eval.parsing's (one rule for the package)
_REPORT_HEADING = re.compile(r"\b(?:findings|impressions?)\s*:", re.IGNORECASE)
# box markup, removed from report prose (the boxes themselves are parsed separately)
_BOX_MARKUP = re.compile(
    r"```(?:json)?\s*\[.*?\]\s*```"  # fenced JSON list
    r"|<\|box_start\|>.*?<\|box_end\|>"  # legacy Qwen form
    r"|<\|object_ref_start\|>|<\|object_ref_end\|>"
    r"|<bbox>.*?</bbox>",
    re.DOTALL,
)


def strip_control_tokens(text: str) -> str:
    """Remove ChatML/vision control tokens (keeps ``[SEG]`` and box markup)."""
    for token in CONTROL_TOKENS:
        text = text.replace(token, "")
    return text.strip()


def split_reasoning(text: str) -> tuple[str | None, str]:
    """``(reasoning, answer)`` from generated text, control tokens removed.

    The rules are ``eval.parsing.split_think_answer``'s (the evaluator scores with the same
    split): the ``<answer>`` part, else the text after ``</think>``, else the whole text.

    >>> split_reasoning("<think>round, dense</think><answer>a nodule</answer><|im_end|>")
    ('round, dense', 'a nodule')
    >>> split_reasoning("Sure, it is [SEG].<|im_end|>")
    (None, 'Sure, it is [SEG].')
    """
    parts = split_think_answer(strip_control_tokens(text))
    return parts.reasoning, parts.answer


def strip_box_markup(text: str) -> str:
    """Prose without box markup, whitespace collapsed."""
    return re.sub(r"[ \t]+", " ", _BOX_MARKUP.sub("", text)).strip()


def parse_report(answer: str, boxes: list[Box]) -> Report | None:
    """A :class:`Report` when the answer has "Findings:" and/or "Impression:", else None.

    ``boxes`` are the boxes parsed from the same answer (original pixels): a report cites
    them per region, so they travel with it. Box markup is removed from the prose.

    >>> r = parse_report("Findings: clear lungs. Impression: normal.", [])
    >>> (r.findings, r.impression)
    ('clear lungs.', 'normal.')
    """
    if not _REPORT_HEADING.search(answer):
        return None
    findings, impression = split_report(answer)
    return Report(findings=strip_box_markup(findings), impression=strip_box_markup(impression), boxes=list(boxes))

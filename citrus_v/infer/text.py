"""Turning generated text into the parts a user sees: reasoning, answer, structured report.

The reading rules are ``citrus_v.data.answers``'s (evaluation scores with the same ones).

Pure string functions (no model, no tokenizer), so they are tested on hand-written text.
"""

from __future__ import annotations

import re

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
    prose = [clean_report_prose(strip_box_markup(part, keep_newlines=True)) for part in (findings, impression)]
    return Report(findings=prose[0], impression=prose[1], boxes=list(boxes))


_SEGMENT_ASK = re.compile(r"\bsegment(?:ation of|s)?\s+(?:out\s+)?(?P<what>[^.?!;:\n]+)", re.IGNORECASE)
_WHERE_TAIL = re.compile(r"\s+(?:in|on|from|within|of)\s+(?:this|the|these|that|each)\s+\w+.*$", re.IGNORECASE)
_ARTICLE = re.compile(r"^(?:the|a|an|all)\s+", re.IGNORECASE)


_FENCE = re.compile(r"```[a-zA-Z]*\s*.*?```|```[a-zA-Z]*", re.DOTALL)
# a preposition left before punctuation once the box it introduced is cut out: "in the spleen at ."
_DANGLING = re.compile(r"[ \t]*\b(?:(?:as )?(?:shown|seen|located|marked) (?:at|in)|at|in|on|within|near|see)[ \t]*(?=[.,;:)]|$)",
                       re.IGNORECASE | re.MULTILINE)
_EMPTY_BRACKETS = re.compile(r"[ \t]*(?:\(\s*\)|\[\s*\])")


def clean_report_prose(text: str) -> str:
    r"""Report prose as a reader reads it once its box markup is cut out: no code fences (a fence
    the box reader could not read is dropped, not shown raw), no empty brackets, no preposition
    left dangling before punctuation.

    >>> clean_report_prose("A cyst in the spleen at . No ascites.")
    'A cyst in the spleen. No ascites.'
    >>> clean_report_prose('Nodule ```json\n[{"bbox_2d": [1, 2]}]\n``` (see ).')
    'Nodule.'
    """
    text = _FENCE.sub("", text)
    text = _DANGLING.sub("", text)  # "(see )" -> "()" -> ""
    text = _DANGLING.sub("", _EMPTY_BRACKETS.sub("", text))
    text = re.sub(r"[ \t]+([.,;:])", r"\1", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def structures_named(prompt: str) -> list[str]:
    """The structures a segmentation prompt names, in order ("" names none).

    >>> structures_named("Please segment the liver.")
    ['liver']
    >>> structures_named("Can you segment the left kidney and the spleen in this CT image?")
    ['left kidney', 'spleen']
    >>> structures_named("What is shown?")
    []
    """
    found = _SEGMENT_ASK.search(prompt or "")
    if found is None:
        return []
    what = _WHERE_TAIL.sub("", found.group("what")).strip()
    parts = re.split(r"\s*,\s*(?:and\s+)?|\s+and\s+", what)
    return [_ARTICLE.sub("", p).strip() for p in parts if _ARTICLE.sub("", p).strip()]


def label_masks(masks: list, prompt: str) -> None:
    """Fill empty mask labels with the structures the prompt names: pairwise when it names one per
    mask, the one name for every mask when it names one; left empty otherwise (no guess)."""
    names = structures_named(prompt)
    if len(names) not in (1, len(masks)):
        return
    for i, mask in enumerate(masks):
        if not mask.label:
            mask.label = names[i] if len(names) == len(masks) else names[0]

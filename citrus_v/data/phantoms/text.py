"""Questions and answers for the image phantoms, from a few fixed templates.

The phrasings are deliberately few (a tiny tokenizer and model learn them quickly); what
varies is the image-grounded content. Closed answers are balanced by construction: the
k-th sample of a (modality, task) pair cycles through templates and answer values, so
"yes"/"no", left/right and small/large each get exactly half of their template.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import ModalitySpec, Phantom

BOXES = "<boxes>"  # the chat template replaces it with the fenced JSON list of `objects`
SEG_ONE = "Please segment the {a}."
SEG_TWO = "Please segment the {a} and the {b}."
DET_ONE = "Please locate the {a}."
DET_TWO = "Please locate the {a} and the {b}."
PRESENCE_Q = "Is there a {finding} in this image?"
SIZE_Q = "Is the {finding} small or large?"
MODALITY_Q = "What imaging modality is this?"
WHERE_Q = "Where is the {finding}?"
ABNORMAL_Q = "What abnormality is seen?"
CAPTION_Q = "Describe this image briefly."
REPORT_Q = "Write a report for this image."
COT_SUFFIX = " Think step by step."
CLOSED_TEMPLATES = ("presence", "location", "size")
OPEN_TEMPLATES = ("modality", "where", "abnormality")


@dataclass(frozen=True)
class Plan:
    """What to draw and what to ask, decided before rendering."""

    present: bool
    side: int
    large: bool
    template: str  # which question family, for meta and tests


@dataclass
class QA:
    question: str
    answer: str
    seg: list[str]  # mask names, one per [SEG] in order
    det: list[str]  # mask names whose boxes go to `objects`, in order


def plan(spec: ModalitySpec, task: str, k: int, rng: np.random.Generator, flip: int = 0) -> Plan:
    """Attributes for the k-th sample of (spec, task); balanced over k where the answer is closed.

    Templates cycle fastest and the answer bit flips every full cycle; ``flip`` (the pair's
    place in the schedule) starts half of the modalities on "yes", so even a split with
    few samples per pair stays balanced overall.
    """
    side, large = int(rng.integers(2)), bool(rng.integers(2))
    bit = (k // len(CLOSED_TEMPLATES) + flip) % 2
    if task in ("vqa_closed", "cot"):
        template = CLOSED_TEMPLATES[k % len(CLOSED_TEMPLATES)]
        if template == "presence":
            return Plan(bit == 0, side, large, template)
        if template == "location":
            return Plan(True, bit, large, template)
        return Plan(True, side, bit == 1, template)
    if task == "vqa_open":
        template = OPEN_TEMPLATES[k % len(OPEN_TEMPLATES)]
        present = template == "where" or (template == "abnormality" and (k // 3) % 2 == 0) or (
            template == "modality" and bool(rng.integers(2)))
        return Plan(present, side, large, template)
    if task == "segmentation":
        return Plan(not spec.organs or rng.random() < 0.7, side, large, "segment")
    if task == "detection":
        return Plan(not spec.organs or rng.random() < 0.8, side, large, "locate")
    if task in ("report", "caption"):
        return Plan(k % 4 != 3, side, large, task)  # 3 abnormal : 1 normal
    raise ValueError(f"task {task!r} has no image-phantom template")


def _where(spec: ModalitySpec, side: int) -> tuple[str, str]:
    """('in the left lung', 'left lung'): the sentence phrase and the short answer."""
    phrase = spec.location_phrase.format(loc=spec.locations[side])
    short = phrase.split(" ", 2)[2] if phrase.startswith(("in the ", "on the ")) else phrase
    return phrase, short


def _seg_answer(names: list[str]) -> str:
    if len(names) == 1:
        return "Sure, it is [SEG]."
    return f"The {names[0]} is [SEG] and the {names[1]} is [SEG]."


def build(spec: ModalitySpec, ph: Phantom, task: str, p: Plan, rng: np.random.Generator) -> QA:
    """The question, the answer and which masks/boxes it refers to."""
    f = spec.finding
    size = "large" if p.large else "small"
    loc_phrase, loc_short = _where(spec, p.side)
    finding_text = f"{size} {spec.appearance} {f} {loc_phrase}"
    organ = spec.organs[int(rng.integers(len(spec.organs)))] if spec.organs else None

    if task == "segmentation":
        if p.present and organ is not None:
            names = [[f], [organ, f], [organ]][int(rng.integers(3))]
        else:
            names = [f] if p.present else [organ]
        q = SEG_ONE.format(a=names[0]) if len(names) == 1 else SEG_TWO.format(a=names[0], b=names[1])
        return QA(q, _seg_answer(names), names, [])
    if task == "detection":
        if p.present and organ is not None and rng.random() < 0.25:
            names = [f, organ]
        else:
            names = [f] if p.present else [organ]
        q = DET_ONE.format(a=names[0]) if len(names) == 1 else DET_TWO.format(a=names[0], b=names[1])
        return QA(q, BOXES, [], names)
    if task in ("vqa_closed", "cot"):
        q, a, think = _closed(spec, p, size, loc_phrase, loc_short)
        if task == "vqa_closed":
            return QA(q, a, [], [])
        return QA(q + COT_SUFFIX, f"<think>This is {spec.phrase}. {think}</think><answer>{a}</answer>", [], [])
    if task == "vqa_open":
        if p.template == "modality":
            return QA(MODALITY_Q, spec.name, [], [])
        if p.template == "where":
            return QA(WHERE_Q.format(finding=f), loc_short, [], [])
        return QA(ABNORMAL_Q, f"{size} {f} {loc_phrase}" if p.present else "none", [], [])
    if task == "caption":
        tail = f"showing a {finding_text}" if p.present else f"with no {f}"
        return QA(CAPTION_Q, f"{spec.phrase[0].upper()}{spec.phrase[1:]} {tail}.", [], [])
    if task == "report":
        if p.present:
            a = (f"Findings: This is {spec.phrase}. There is a {finding_text} at {BOXES}. "
                 f"Impression: {size.capitalize()} {f} {loc_phrase}.")
            return QA(REPORT_Q, a, [], [f])
        a = f"Findings: This is {spec.phrase}. {spec.normal_text} No {f} is seen. Impression: No abnormality."
        return QA(REPORT_Q, a, [], [])
    raise ValueError(f"task {task!r} has no image-phantom template")


def _closed(spec: ModalitySpec, p: Plan, size: str, loc_phrase: str, loc_short: str) -> tuple[str, str, str]:
    """(question, short answer, reasoning sentences) for a closed question."""
    f, look = spec.finding, spec.appearance
    a_look = ("an " if look[0] in "aeiou" else "a ") + look
    if p.template == "presence":
        if p.present:
            think = f"I look for {a_look} area. There is {a_look} area {loc_phrase}, which is a {f}."
        else:
            think = f"I look for {a_look} area. No {look} area is seen."
        return PRESENCE_Q.format(finding=f), "yes" if p.present else "no", think
    if p.template == "location":
        think = f"There is {a_look} {f}. It lies {loc_phrase}."
        return spec.location_question, spec.locations[p.side], think
    think = f"There is {a_look} {f} {loc_phrase}. Compared with the image, it is {size}."
    return SIZE_Q.format(finding=f), size, think

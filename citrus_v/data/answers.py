"""Reading a model's answer: reasoning vs answer, [SEG] count, report sections, box markup.

One home for these rules, at the lowest layer that needs them: inference shows the user what
they produce (``citrus_v.infer.text``) and evaluation scores with the same split
(``citrus_v.eval.parsing``, which adds the closed-choice rules). Box coordinates are parsed by
``citrus_v.data.boxes.parse_boxes``, next to the renderer of the same formats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from citrus_v.data.schema import SEG_TOKEN

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.S | re.I)
_THINK_END = re.compile(r"</think>", re.I)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S | re.I)
_TAGS = re.compile(r"</?(?:think|answer)>", re.I)
_FINDINGS = re.compile(r"\bfindings\s*:", re.I)
_IMPRESSION = re.compile(r"\bimpressions?\s*:", re.I)
# box markup in free text: fenced JSON lists, bare bbox_2d lists, the <boxes> placeholder of a
# reference, the legacy <|box_start|>..<|box_end|>, <|object_ref_*|> and <bbox>..</bbox> forms
_BOX_MARKUP = re.compile(
    r"```(?:json)?\s*\[.*?\]\s*```"
    r"|\[\s*\{[^\[\]]*?\"bbox_2d\".*?\}\s*\]"
    r"|<boxes>"
    r"|<\|box_start\|>.*?<\|box_end\|>"
    r"|<\|object_ref_start\|>|<\|object_ref_end\|>"
    r"|<bbox>.*?</bbox>"
    # the published report citations: {"Part": "heart", "bbox": "[..]"} whole, and the " with bbox [..]" /
    # " bbox [..]" after a named region (the name stays: it is prose)
    r"|\{[^{}]*\"bbox\"\s*:\s*\"?\[[^\[\]{}]*\]\"?[^{}]*\}"
    r"|(?:\s+with)?\s+bbox\s*:?\s*\[\s*-?[\d.]+\s*(?:,\s*-?[\d.]+\s*){3}\]",
    re.S | re.I,
)


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
    end = _THINK_END.search(text)
    if ans:
        answer = ans.group(1)
    elif think and end:
        answer = text[end.end():]
    elif think:
        answer = ""  # the model stopped while still thinking
    else:
        answer = text
    return SplitText(reasoning, _TAGS.sub("", answer).strip())


def count_seg_tokens(text: str) -> int:
    """How many ``[SEG]`` tokens a text holds.

    >>> count_seg_tokens("liver [SEG] and spleen [SEG].")
    2
    """
    return text.count(SEG_TOKEN)


def has_report_headings(text: str) -> bool:
    """Whether a text is a report: it has a "Findings:" or "Impression(s):" heading.

    >>> has_report_headings("Findings: clear lungs."), has_report_headings("The liver [SEG].")
    (True, False)
    """
    return bool(_FINDINGS.search(text) or _IMPRESSION.search(text))


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


def strip_box_markup(text: str, keep_newlines: bool = False) -> str:
    """``text`` without box markup, whitespace collapsed (line breaks kept when ``keep_newlines``,
    as a report shown to a user keeps its lines): report prose is scored on its words; the boxes
    it cites are coordinates, scored by the detection metrics instead.

    >>> strip_box_markup('Findings: a lesion at ```json\\n[{"bbox_2d": [1, 2, 3, 4], "label": "x"}]\\n```. Impression: x.')
    'Findings: a lesion at . Impression: x.'
    >>> strip_box_markup("Findings: a lesion at <boxes>. Impression: x.")
    'Findings: a lesion at . Impression: x.'
    >>> strip_box_markup("a <bbox>[1,2,3,4]</bbox> b\\nc", keep_newlines=True)
    'a b\\nc'
    >>> strip_box_markup('The lung_right with bbox [127, 131, 485, 720] is clear; heart {"Part": "heart", "bbox": "[1, 2, 3, 4]"} ok.')
    'The lung_right is clear; heart ok.'
    """
    text = _BOX_MARKUP.sub("", text)
    if keep_newlines:
        return re.sub(r"[ \t]+", " ", text).strip()
    return " ".join(text.split())

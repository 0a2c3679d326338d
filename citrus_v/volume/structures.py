"""Names of the structures a segmentation prompt asks for: one name per expected [SEG].

"Segment the liver and the spleen." -> ["liver", "spleen"]. The model answers with one [SEG] per
structure ("The liver is [SEG] and the spleen is [SEG]."), so the k-th mask of every slice is
the k-th structure. Names come from the prompt (stable across slices); the answer text of a
slice can only fill in names the prompt did not give.
"""

from __future__ import annotations

import re

_LEAD = re.compile(
    r"^\s*(?:please\s+|can you\s+|could you\s+)?"
    r"(?:segment|outline|delineate|contour|mask|find|show|highlight|locate|identify)\b(?:\s+me)?\s*",
    re.IGNORECASE,
)
_TAIL = re.compile(r"\s*(?:in|on|within|from)\s+(?:this|the|these)\s+(?:image|images|slice|slices|scan|volume|ct|mr|mri)\b.*$", re.I)
_SPLIT = re.compile(r"\s*(?:,\s*and\s+|,|;|\band\b|&)\s*", re.IGNORECASE)
_ARTICLE = re.compile(r"^(?:the|a|an|both)\s+", re.IGNORECASE)
_SEG_PHRASE = re.compile(r"(?:the\s+)?([a-z][a-z \-]{0,40}?)\s+(?:is|are|:)\s*\[SEG\]", re.IGNORECASE)


def names_from_prompt(prompt: str) -> list[str]:
    """Structure names requested by a segmentation instruction, in order; [] if none found.

    >>> names_from_prompt("Please segment the liver and the spleen.")
    ['liver', 'spleen']
    >>> names_from_prompt("Segment the left kidney, the aorta and the gallbladder in this CT")
    ['left kidney', 'aorta', 'gallbladder']
    """
    text = prompt.replace("<image>", " ").strip()
    text = text.split("?")[0].split(".")[0] if "." in text or "?" in text else text
    if not _LEAD.search(text):
        return []
    text = _TAIL.sub("", _LEAD.sub("", text, count=1))
    names = []
    for part in _SPLIT.split(text):
        part = _ARTICLE.sub("", part.strip(" .!:")).strip().lower()
        if part:
            names.append(part)
    return names


def names_from_answer(answer: str) -> list[str]:
    """Names written right before each [SEG] ("The liver is [SEG]"); [] when the answer has none.

    >>> names_from_answer("The liver is [SEG] and the spleen is [SEG].")
    ['liver', 'spleen']
    """
    found = []
    for m in _SEG_PHRASE.finditer(answer):
        words = m.group(1).strip().lower()
        # keep the noun phrase after a leading clause word ("and the spleen" -> "spleen")
        words = re.split(r"\b(?:and|it|sure|here|,)\b", words)[-1].strip()
        words = _ARTICLE.sub("", words).strip()
        found.append(words if words and words not in ("it", "this", "that") else "")
    return found


def structure_names(prompt: str, n_structures: int, answers: list[str] = ()) -> list[str]:  # type: ignore[assignment]
    """``n_structures`` unique names: the prompt's, then names read from answers, then structure_<k>."""
    names = names_from_prompt(prompt)[:n_structures]
    for answer in answers:
        if len(names) >= n_structures:
            break
        extra = [n for n in names_from_answer(answer) if n]
        names += extra[len(names) : n_structures]
    while len(names) < n_structures:
        names.append(f"structure_{len(names) + 1}")
    unique: list[str] = []
    for name in names:  # "kidney, kidney" must stay two labels
        candidate, k = name, 2
        while candidate in unique:
            candidate, k = f"{name}_{k}", k + 1
        unique.append(candidate)
    return unique

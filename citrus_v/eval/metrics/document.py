"""Document QA: ANLS (Average Normalised Levenshtein Similarity) and exact field match.

Document answers are values such as "12.5 mg/dL" or "2023-04-01", where punctuation carries
meaning, so the normalisation here is milder than VQA's: lowercase, strip the ends, collapse
inner whitespace to one space. Punctuation and articles are kept.

ANLS of one sample (Biten et al., ST-VQA): for each accepted reference, NL = Levenshtein
distance / max(len(pred), len(ref)) over characters; similarity = 1 - NL when NL < threshold
(0.5), else 0; the sample's score is the best over its references. Both strings empty = 1.0.
Aggregation: mean over samples.
"""

from __future__ import annotations

from collections.abc import Sequence


def normalize_field(text: str) -> str:
    """Lowercase, trimmed, inner whitespace collapsed.

    >>> normalize_field("  12.5   MG/dL ")
    '12.5 mg/dl'
    """
    return " ".join(text.lower().split())


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1).

    >>> levenshtein("kitten", "sitting")
    3
    """
    if len(a) < len(b):
        a, b = b, a  # keep the row (len(b) + 1) the short one
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _as_refs(refs: str | Sequence[str]) -> list[str]:
    refs = [refs] if isinstance(refs, str) else list(refs)
    if not refs:
        raise ValueError("a document sample needs at least one reference answer")
    return refs


def anls(pred: str, refs: str | Sequence[str], threshold: float = 0.5) -> float:
    """ANLS of one prediction against one or more accepted references.

    >>> anls("12.5 mg/dl", "12.5 mg/dL")
    1.0
    >>> anls("abcd", "abce")  # NL = 1/4 < 0.5
    0.75
    >>> anls("ab", "cd")  # NL = 1 >= 0.5
    0.0
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"ANLS threshold must be in (0, 1], got {threshold}")
    p = normalize_field(pred)
    best = 0.0
    for ref in _as_refs(refs):
        r = normalize_field(ref)
        longest = max(len(p), len(r))
        if longest == 0:
            return 1.0
        nl = levenshtein(p, r) / longest
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


def field_exact(pred: str, refs: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference, else 0.0."""
    p = normalize_field(pred)
    return float(any(p == normalize_field(r) for r in _as_refs(refs)))

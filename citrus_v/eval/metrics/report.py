"""Report generation: BLEU-4 and CIDEr (pycocoevalcap) and ROUGE-L (rouge-score).

All three see the same tokens (``report_tokens``): lowercase, runs of Unicode word characters
(letters, digits, underscore), punctuation dropped. We tokenise ourselves, so no Java PTB
tokenizer is called, and rouge-score's ASCII-only tokenizer does not erase non-English text.

Aggregation (state it with the number):
- BLEU-4: corpus level (n-gram counts and lengths summed over samples, brevity penalty from the
  closest reference length), as pycocoevalcap computes it; in [0, 1].
- CIDEr: CIDEr-D as pycocoevalcap computes it (idf from the evaluated references, Gaussian
  length penalty sigma 6, x10), mean over samples. Its idf is corpus-relative: with a single
  sample every idf is log(1/1) = 0, so CIDEr needs several samples to mean anything.
- ROUGE-L: F-measure of the longest common subsequence per sample, mean over samples; in [0, 1].
Empty text (after tokenising) on both sides scores 1.0 for ROUGE-L; the corpus scores skip
samples whose reference is empty (nothing to match), and say how many they used.

Text overlap rewards a fluent "No lesion is seen." as much as a right one, so the verdict is scored
too: ``states_normal`` reads a report's impression as normal or abnormal (the rule is in its
docstring), and the harness counts how often that verdict agrees with the reference's and how many
abnormal references the reports call abnormal (a missed lesion is the costly error).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+", re.UNICODE)


def report_tokens(text: str) -> list[str]:
    """Lowercase word tokens, punctuation dropped.

    >>> report_tokens("No acute findings. Heart size: normal!")
    ['no', 'acute', 'findings', 'heart', 'size', 'normal']
    """
    return _WORD.findall(text.lower())


class _Tokenizer:
    """The object rouge-score expects: ``tokenize(text) -> list[str]``."""

    def tokenize(self, text: str) -> list[str]:
        return report_tokens(text)


_IMPRESSION = re.compile(r"\bimpression\s*:", re.IGNORECASE)
_NORMAL_OPENING = re.compile(r"^\W*(no|normal|unremarkable)\b", re.IGNORECASE)


def impression(text: str) -> str:
    """The text after the last "Impression:" (any case), or the whole text when there is none."""
    parts = _IMPRESSION.split(text)
    return parts[-1].strip()


def states_normal(text: str) -> bool:
    """Whether a report's impression calls the study normal: it opens with "no", "normal" or
    "unremarkable" ("No abnormality.", "Normal study.", "No acute findings."); anything else
    ("Large nodule in the left lung.") is an abnormal verdict. Reports without an "Impression:"
    are read from their first word.

    >>> states_normal("Findings: The lungs are clear. Impression: No abnormality.")
    True
    >>> states_normal("Findings: A nodule in the left lung at [10, 12, 40, 44]. Impression: Nodule in the left lung.")
    False
    """
    return bool(_NORMAL_OPENING.match(impression(text)))


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure of one prediction against one reference.

    >>> rouge_l("the heart is normal", "heart normal")  # LCS 2; P = 2/4, R = 2/2
    0.6666666666666666
    """
    from rouge_score import rouge_scorer

    if not report_tokens(pred) and not report_tokens(ref):
        return 1.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer())
    return float(scorer.score(ref, pred)["rougeL"].fmeasure)


def _coco_inputs(preds: Sequence[str], refs: Sequence[str]) -> tuple[dict, dict]:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    gts, res = {}, {}
    for i, (p, r) in enumerate(zip(preds, refs)):
        r_tok = report_tokens(r)
        if not r_tok:
            continue
        gts[i] = [" ".join(r_tok)]  # pycocoevalcap splits on spaces
        res[i] = [" ".join(report_tokens(p))]
    return gts, res


def bleu4(preds: Sequence[str], refs: Sequence[str]) -> tuple[float | None, int]:
    """Corpus BLEU-4 and the number of samples it used (references that are not empty).

    Returns (None, 0) when no sample has a reference.
    """
    from pycocoevalcap.bleu.bleu import Bleu

    gts, res = _coco_inputs(preds, refs)
    if not gts:
        return None, 0
    with contextlib.redirect_stdout(io.StringIO()):
        score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(score[3]), len(gts)  # score = [BLEU-1, BLEU-2, BLEU-3, BLEU-4]


def cider(preds: Sequence[str], refs: Sequence[str]) -> tuple[float | None, int]:
    """CIDEr-D (mean over samples) and the number of samples it used."""
    from pycocoevalcap.cider.cider import Cider

    gts, res = _coco_inputs(preds, refs)
    if not gts:
        return None, 0
    with contextlib.redirect_stdout(io.StringIO()):
        score, _ = Cider().compute_score(gts, res)
    return float(score), len(gts)

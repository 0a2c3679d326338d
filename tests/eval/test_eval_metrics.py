"""Hand-checkable values for every metric family, and the empty-mask / empty-text rules."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

from citrus_v.eval.metrics import detection, document, report, segmentation, vqa
from citrus_v.eval.metrics.aggregate import ScoreAccumulator

# --- segmentation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred, gt, want_dice, want_iou",
    [
        ([[1, 1], [0, 0]], [[1, 0], [0, 0]], 2 * 1 / (2 + 1), 1 / 2),  # P ⊃ G
        ([[1, 1], [0, 0]], [[1, 0], [1, 0]], 2 * 1 / (2 + 2), 1 / 3),  # one shared pixel
        ([[1, 0], [0, 0]], [[0, 0], [0, 1]], 0.0, 0.0),  # disjoint
        ([[1, 1], [1, 1]], [[1, 1], [1, 1]], 1.0, 1.0),  # identical
    ],
)
def test_dice_and_iou_on_2x2(pred, gt, want_dice, want_iou):
    assert segmentation.dice(np.array(pred), np.array(gt)) == pytest.approx(want_dice, abs=0)
    assert segmentation.iou(np.array(pred), np.array(gt)) == pytest.approx(want_iou, abs=0)


def test_empty_mask_rule():
    empty, one = np.zeros((2, 2), bool), np.array([[0, 0], [0, 1]], bool)
    assert segmentation.dice(empty, empty) == 1.0  # both empty: correctly found nothing
    assert segmentation.dice(one, empty) == 0.0  # only the prediction has pixels
    assert segmentation.dice(empty, one) == 0.0  # only the truth has pixels
    assert segmentation.iou(empty, empty) == 1.0
    assert segmentation.iou(empty, one) == 0.0


def test_dice_treats_any_nonzero_as_foreground_and_checks_shapes():
    assert segmentation.dice(np.array([[255, 0]], np.uint8), np.array([[True, False]])) == 1.0
    with pytest.raises(ValueError, match=r"prediction \(2, 2\) vs ground truth \(2, 3\)"):
        segmentation.dice(np.zeros((2, 2)), np.zeros((2, 3)))


def test_accumulator_mean_median_per_group():
    acc = ScoreAccumulator()
    for v, g in [(1.0, "CT"), (0.0, "CT"), (0.2, "CT"), (0.5, "MR"), (0.9, None)]:
        acc.append(v, g)
    assert acc.mean().value == pytest.approx(2.6 / 5)
    assert acc.median().value == 0.5
    assert (acc.mean("CT").value, acc.mean("CT").n) == (pytest.approx(0.4), 3)
    assert acc.median("CT").value == 0.2
    assert acc.group_names() == ["CT", "MR", "unknown"]
    assert acc.mean("US").value is None and acc.mean("US").n == 0
    with pytest.raises(ValueError, match="NaN"):
        acc.append(float("nan"))
    acc.reset()
    assert len(acc) == 0 and acc.median().value is None


# --- VQA ----------------------------------------------------------------------------------


def test_normalisation_rule():
    assert vqa.normalize_answer("  The LEFT-lung, an Opacity! ") == "left lung opacity"
    assert vqa.exact_match("The liver.", "liver") == 1.0
    assert vqa.exact_match("left lung", "lung") == 0.0
    assert vqa.exact_match("", "") == 1.0


def test_token_recall_and_f1_by_hand():
    # pred words: mass, in, left, lung (4); ref words: left, lung, mass, right (4); common 3
    assert vqa.token_recall("a mass in the left lung", "left lung mass, right") == 3 / 4
    assert vqa.token_f1("a mass in the left lung", "left lung mass, right") == pytest.approx(3 / 4)
    # repeated words count at most as often as they occur on both sides
    assert vqa.token_recall("lung", "lung lung") == 1 / 2
    assert vqa.token_f1("lung lung lung", "lung") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert vqa.token_f1("heart", "lung") == 0.0
    # empty rules: both empty = 1, one empty = 0
    assert vqa.token_f1("", "the") == 1.0  # "the" normalises to nothing
    assert vqa.token_f1("lung", "") == 0.0 and vqa.token_recall("", "lung") == 0.0


# --- detection ----------------------------------------------------------------------------


def test_box_iou_by_hand():
    assert detection.box_iou([0, 0, 2, 2], [0, 0, 2, 2]) == 1.0
    assert detection.box_iou([0, 0, 2, 2], [1, 0, 3, 2]) == pytest.approx(2 / 6)
    assert detection.box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert detection.box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0  # disjoint
    assert detection.box_iou([0, 0, 1, 1], [1, 0, 2, 1]) == 0.0  # touching edges
    assert detection.box_iou([1, 1, 1, 1], [1, 1, 1, 1]) == 0.0  # no area at all
    with pytest.raises(ValueError, match="x2 < x1"):
        detection.box_iou([2, 0, 1, 1], [0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"\[x1, y1, x2, y2\]"):
        detection.box_iou([0, 0, 1], [0, 0, 1, 1])


def test_first_box_hit_uses_only_the_first_box_against_any_gt():
    gts = [[0, 0, 10, 10], [20, 20, 30, 30]]
    assert detection.first_box_hit([[20, 20, 30, 30]], gts)  # matches the SECOND GT box
    assert not detection.first_box_hit([[50, 50, 60, 60], [0, 0, 10, 10]], gts)  # 2nd box ignored
    assert detection.first_box_hit([[0, 0, 10, 5]], gts)  # IoU exactly 0.5 counts
    assert not detection.first_box_hit([[0, 0, 10, 4]], gts)  # IoU 0.4
    assert not detection.first_box_hit([], gts)  # no prediction = miss
    with pytest.raises(ValueError, match="at least one ground-truth box"):
        detection.first_box_hit([[0, 0, 1, 1]], [])


def test_coco_map_perfect_wrong_and_edge_cases():
    perfect = detection.coco_map([([[0, 0, 10, 10]], [[0, 0, 10, 10]]), ([[5, 5, 25, 25]], [[5, 5, 25, 25]])])
    assert (perfect.map, perfect.map50, perfect.num_gt, perfect.num_pred) == (1.0, 1.0, 2, 2)
    wrong = detection.coco_map([([[50, 50, 60, 60]], [[0, 0, 10, 10]])])
    assert wrong.map == 0.0 and wrong.map50 == 0.0
    # one sample right, one with no prediction: recall tops at 1/2, precision 1 -> AP@.5 = 0.5 (101-point)
    half = detection.coco_map([([[0, 0, 10, 10]], [[0, 0, 10, 10]]), ([], [[0, 0, 10, 10]])])
    assert half.map50 == pytest.approx(51 / 101)
    assert detection.coco_map([([[0, 0, 1, 1]], [])]).map is None  # no ground truth: undefined
    assert detection.coco_map([([], [[0, 0, 1, 1]])]).map == 0.0  # truth but no prediction


def test_coco_map_is_quiet(capsys):
    detection.coco_map([([[0, 0, 10, 10]], [[0, 0, 10, 10]])])
    assert capsys.readouterr().out == ""


# --- reports ------------------------------------------------------------------------------


def test_report_scores_identical_and_disjoint(capsys):
    same = ["the heart size is normal", "no focal consolidation or effusion"]
    other = ["left basal atelectasis seen", "cardiomegaly with small effusions"]
    b, n = report.bleu4(same, same)
    assert b == pytest.approx(1.0, abs=1e-6) and n == 2
    assert report.bleu4(same, other)[0] == pytest.approx(0.0, abs=1e-6)
    assert report.cider(same, same) == (pytest.approx(10.0), 2)  # cosine 1 per n-gram order, x10
    assert report.cider(same, other[::-1])[0] == 0.0
    assert report.rouge_l(same[0], same[0]) == 1.0
    assert report.rouge_l(same[0], other[0]) == 0.0
    assert capsys.readouterr().out == ""  # pycocoevalcap's prints are silenced


def test_rouge_l_by_hand_and_tokenisation():
    # LCS of (heart, is, normal, size) and (heart, size, normal) is 2 -> P 2/4, R 2/3
    assert report.rouge_l("Heart is normal size.", "heart size normal") == pytest.approx(2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3))
    assert report.report_tokens("右肺 normal!") == ["右肺", "normal"]  # non-ASCII kept
    assert report.rouge_l("右肺", "右肺") == 1.0
    assert report.rouge_l("", "...") == 1.0  # both empty after tokenising


def test_report_corpus_scores_skip_empty_references():
    assert report.bleu4(["anything"], [""]) == (None, 0)
    assert report.cider(["x"], ["  "]) == (None, 0)
    assert report.cider(["a b c d"], ["a b c d"])[0] == 0.0  # one sample: idf log(1/1) = 0
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        report.bleu4(["a", "b"], ["a"])


# --- documents ----------------------------------------------------------------------------


def test_anls_edge_cases():
    assert document.levenshtein("", "abc") == 3 and document.levenshtein("abc", "abc") == 0
    assert document.anls("12.5 mg/dL", " 12.5  MG/dl") == 1.0  # case and spacing only
    assert document.anls("abcd", "abce") == 0.75  # NL 1/4
    assert document.anls("abcd", "abef") == 0.0  # NL 2/4 = threshold: 0
    assert document.anls("abcd", "abef", threshold=0.6) == 0.5
    assert document.anls("", "") == 1.0
    assert document.anls("", "x") == 0.0
    assert document.anls("abcd", ["zzzz", "abcx"]) == 0.75  # best reference
    with pytest.raises(ValueError, match="at least one reference"):
        document.anls("a", [])
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        document.anls("a", "a", threshold=0)


def test_field_exact_keeps_punctuation():
    assert document.field_exact("12.5", "12.5") == 1.0
    assert document.field_exact("125", "12.5") == 0.0  # unlike VQA, "." matters in a value
    assert document.field_exact("Positive", ["negative", "POSITIVE "]) == 1.0


@pytest.mark.parametrize("text, normal", [
    ("Findings: The lungs are clear. No nodule is seen. Impression: No abnormality.", True),
    ("Findings: Clear lungs. IMPRESSION: normal chest radiograph.", True),
    ("Impression:  Unremarkable study", True),
    ("Findings: A large nodule in the left lung. Impression: Large nodule in the left lung.", False),
    # the verdict is the impression's, not the findings' (which may say "no" about other organs)
    ("Findings: No effusion. A cyst in the kidney. Impression: Cyst in the kidney.", False),
    # the last "Impression:" counts; without one the whole text is read from its first word
    ("Impression: no change. Addendum. Impression: New nodule.", False),
    ("No acute findings.", True),
    ("Nodule in the left lung.", False),  # "No" must be a whole word
    ("", False),
])
def test_report_verdict_rule(text, normal):
    assert report.states_normal(text) is normal


# --- docstrings stay true -----------------------------------------------------------------


@pytest.mark.parametrize("module", ["aggregate", "segmentation", "vqa", "detection", "report", "document"])
def test_metric_doctests(module):
    mod = importlib.import_module(f"citrus_v.eval.metrics.{module}")
    failed, attempted = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failed == 0 and attempted > 0


def test_malformed_predicted_boxes_are_misses_not_errors():
    from citrus_v.eval.metrics.detection import coco_map, first_box_hit, is_well_formed

    gt = [[10, 10, 20, 20]]
    assert not is_well_formed([93, 127, 87, 133]) and is_well_formed([1, 1, 1, 1])
    # x2 < x1 in the first box: a miss, and the good second box does not count instead
    assert first_box_hit([[20, 10, 10, 20], [10, 10, 20, 20]], gt) is False
    assert first_box_hit([[10, 10, 20, 20]], gt) is True
    # COCO: the malformed box stays a (zero-area, unmatched) detection ranked first
    good = coco_map([([[10, 10, 20, 20]], gt)])
    mixed = coco_map([([[20, 10, 10, 20], [10, 10, 20, 20]], gt)])
    assert good.map50 == pytest.approx(1.0) and mixed.num_pred == 2 and mixed.map50 < good.map50
    with pytest.raises(ValueError, match="ground-truth box"):
        coco_map([([[10, 10, 20, 20]], [[20, 10, 10, 20]])])

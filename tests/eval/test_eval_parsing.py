"""Model text -> reasoning/answer, closed choices, [SEG] count, report sections."""

from __future__ import annotations

import doctest

import pytest

from citrus_v.data import answers
from citrus_v.data.answers import SplitText
from citrus_v.eval import parsing


@pytest.mark.parametrize(
    "text, want",
    [
        ("<think>opacity in RLL</think>\n<answer>Pneumonia.</answer>", SplitText("opacity in RLL", "Pneumonia.")),
        ("<think>a</think> then yes", SplitText("a", "then yes")),  # no <answer>: text after </think>
        ("<answer>yes", SplitText(None, "yes")),  # unclosed <answer> runs to the end
        ("<think>still thinking", SplitText("still thinking", "")),  # stopped mid-thought
        ("plain answer", SplitText(None, "plain answer")),
        ("<THINK>x</THINK><Answer>B</Answer>", SplitText("x", "B")),  # tags are case-insensitive
    ],
)
def test_split_think_answer(text, want):
    assert answers.split_think_answer(text) == want


@pytest.mark.parametrize(
    "pred, ref, want",
    [
        ("Yes, there is a fracture.", "yes", 1.0),
        ("No", "Yes", 0.0),
        ("I cannot tell.", "no", 0.0),  # no choice made
        ("There is no, yes", "no", 1.0),  # the FIRST yes/no word decides
        ("(B) pleural effusion", "B", 1.0),
        ("b.", "(B) pleural effusion", 1.0),
        ("The answer is C", "B", 0.0),
        ("Answer: (c)", "C. cardiomegaly", 1.0),
        ("A large mass", "A", 0.0),  # "A" here is an article, not option A
        ("Left lung.", "left lung", 1.0),  # text choice: normalised exact match
        ("left", "left lung", 0.0),
    ],
)
def test_closed_answer_correct(pred, ref, want):
    assert parsing.closed_answer_correct(pred, ref) == want


def test_choice_kind_and_bad_kind():
    assert parsing.choice_kind("NO.") == "yes_no"
    assert parsing.choice_kind("D") == "letter"
    assert parsing.choice_kind("a mass") == "text"
    assert parsing.is_closed_reference("yes") and not parsing.is_closed_reference("right kidney")
    with pytest.raises(ValueError, match="unknown choice kind 'digit'"):
        parsing.extract_choice("1", "digit")


def test_count_seg_and_split_report():
    assert answers.count_seg_tokens("no segmentation") == 0
    assert answers.count_seg_tokens("[SEG][SEG] and [SEG]") == 3
    assert answers.split_report("FINDINGS: a.\nIMPRESSIONS: b.") == ("a.", "b.")
    assert answers.split_report("Impression: only this.") == ("", "only this.")
    assert answers.split_report("Findings: only findings.") == ("only findings.", "")


@pytest.mark.parametrize("module", [parsing, answers])
def test_parsing_doctests(module):
    failed, attempted = doctest.testmod(module)
    assert failed == 0 and attempted > 0


def test_strip_box_markup_leaves_the_prose():
    from citrus_v.data.answers import strip_box_markup

    ref = "Findings: There is a small lesion in the liver at <boxes>. Impression: Small lesion."
    ans = ('Findings: There is a small lesion in the liver at ```json\n[{"bbox_2d": [149, 80, 169, 104], '
           '"label": "lesion"}]\n```. Impression: Small lesion.')
    assert strip_box_markup(ans) == strip_box_markup(ref) == (
        "Findings: There is a small lesion in the liver at . Impression: Small lesion."
    )
    legacy = "at <|box_start|>(1,2),(3,4)<|box_end|> and <bbox>[1, 2, 3, 4]</bbox> ok"
    assert strip_box_markup(legacy) == "at and ok"
    assert strip_box_markup("no boxes here") == "no boxes here"

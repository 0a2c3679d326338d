"""scripts/train_vqa_rad.py without training: the text-only nearest-question baseline and the yes/no balance."""

from __future__ import annotations

import pytest

from tests.scripts.conftest import load_script


@pytest.fixture(scope="module")
def script():
    yield from load_script("train_vqa_rad")


def _qa(question: str, answer: str, task: str) -> dict:
    return {"messages": [{"role": "user", "content": "<image>" + question}, {"role": "assistant", "content": answer}],
            "images": [], "task": task}


def test_nearest_question_answers_with_the_most_similar_train_question(script):
    train = [_qa("Is there a pneumothorax?", "No", "vqa_closed"), _qa("Is the heart enlarged?", "Yes", "vqa_closed"),
             _qa("What is the plane of this image?", "Axial", "vqa_open"),
             _qa("Where is the mass?", "Left upper lobe", "vqa_open")]
    val = [_qa("Is the heart size enlarged?", "yes", "vqa_closed"),    # nearest: the heart question -> right
           _qa("Is there a pneumothorax present?", "Yes", "vqa_closed"),  # nearest answers No -> wrong
           _qa("In what plane is this image?", "axial", "vqa_open"),    # recall 1
           _qa("Where is the lesion?", "Right upper lobe", "vqa_open")]  # "upper lobe" of 3 words
    got = script.nearest_question(train, val)
    assert (got["n_closed"], got["n_open"]) == (2, 2)
    assert got["closed_acc"] == pytest.approx(0.5)
    assert got["open_recall"] == pytest.approx((1 + 2 / 3) / 2)


def test_balanced_makes_yes_and_no_equally_frequent_and_keeps_the_rest(script):
    recs = [_qa(f"q{i}", "Yes", "vqa_closed") for i in range(5)] + [_qa("n", "No", "vqa_closed"),
                                                                    _qa("o", "Axial", "vqa_open")]
    out = script.balanced(recs, seed=0)
    answers = [r["messages"][-1]["content"] for r in out]
    assert answers.count("Yes") == answers.count("No") == 5 and answers.count("Axial") == 1

"""Read-out helpers on hand-written text and hand-checkable logits."""

import numpy as np
import pytest
import torch

from citrus_v.infer.generation import GenerationSettings
from citrus_v.infer.transforms import logits_to_masks
from citrus_v.infer.text import parse_report, split_reasoning, strip_box_markup, strip_control_tokens
from citrus_v.infer.types import Box, Mask


def test_split_reasoning_think_answer_and_control_tokens():
    text = "<think>A round opacity in the right lobe.</think><answer>Yes</answer><|im_end|>"
    assert split_reasoning(text) == ("A round opacity in the right lobe.", "Yes")


def test_split_reasoning_without_tags_keeps_seg():
    assert split_reasoning("Sure, it is [SEG].<|im_end|><|endoftext|>") == (None, "Sure, it is [SEG].")


def test_split_reasoning_unclosed_think_has_no_answer():
    reasoning, answer = split_reasoning("<think>still thinking about")
    assert reasoning == "still thinking about" and answer == ""


def test_strip_control_tokens_keeps_box_markup():
    text = "<|vision_start|><|box_start|>(1,2),(3,4)<|box_end|><|im_end|>"
    assert strip_control_tokens(text) == "<|box_start|>(1,2),(3,4)<|box_end|>"


def test_report_with_cited_boxes_and_markup_removed():
    boxes = [Box([1, 2, 3, 4], "heart")]
    answer = 'Findings: The heart ```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "heart"}]\n``` is normal. Impression: No acute disease.'
    report = parse_report(answer, boxes)
    assert report.findings == "The heart is normal."
    assert report.impression == "No acute disease."
    assert report.boxes == boxes
    assert report.to_dict()["boxes"] == [{"bbox": [1.0, 2.0, 3.0, 4.0], "label": "heart"}]


def test_no_report_without_headings():
    assert parse_report("The liver is enlarged.", []) is None


def test_strip_box_markup_all_forms():
    assert strip_box_markup("a <bbox>[1,2,3,4]</bbox> b <|box_start|>(1,2),(3,4)<|box_end|> c") == "a b c"


def test_logits_to_masks_upsamples_then_thresholds():
    # left half positive, right half negative: at 2x width the boundary stays in the middle
    logits = torch.tensor([[[5.0, -5.0], [5.0, -5.0]]])  # (1, 2, 2)
    masks = logits_to_masks(logits, (3, 4))
    assert masks.shape == (1, 3, 4) and masks.dtype == bool
    np.testing.assert_array_equal(masks[0], np.array([[1, 1, 0, 0]] * 3, dtype=bool))


def test_logits_to_masks_empty_and_bad_shape():
    assert logits_to_masks(torch.zeros(0, 8, 8), (5, 7)).shape == (0, 5, 7)
    with pytest.raises(ValueError, match=r"\(n, h, w\)"):
        logits_to_masks(torch.zeros(8, 8), (5, 7))


@pytest.mark.parametrize(
    "field, value",
    [("max_new_tokens", 0), ("temperature", 0.0), ("top_p", 1.5), ("top_k", -1)],
)
def test_generation_settings_validate(field, value):
    with pytest.raises(ValueError, match=f"GenerationSettings.{field}"):
        GenerationSettings(**{field: value})


def test_greedy_kwargs_neutralise_sampling_knobs():
    kw = GenerationSettings(temperature=0.3).generate_kwargs(eos_token_id=2, pad_token_id=0)
    assert kw["do_sample"] is False and kw["temperature"] is None and kw["use_cache"] is True
    kw = GenerationSettings(do_sample=True, temperature=0.3, top_k=5).generate_kwargs(2, 0)
    assert kw["temperature"] == 0.3 and kw["top_k"] == 5


@pytest.mark.parametrize("raw, shown", [(1.013, 1.0), (-0.02, 0.0), (0.84, 0.84)])
def test_mask_scores_are_clipped_to_an_iou(raw, shown):
    # the demo's phantom liver came back with a predicted IoU of 1.01 from SAM's regression head
    assert Mask(mask=np.zeros((2, 2), bool), score=raw).score == pytest.approx(shown)


def test_transforms_docstring_examples_hold():
    import doctest

    from citrus_v.infer import transforms

    result = doctest.testmod(transforms)
    assert result.attempted >= 2 and result.failed == 0


def test_transforms_map_every_frame_of_one_image():
    from citrus_v.infer.transforms import ImageTransforms, mask_to_logits

    t = ImageTransforms(orig_hw=(90, 130), sam_size=256, resized_hw=(84, 112))
    points, labels = t.points_to_segmenter([(65, 45, 1), (0, 90, 0)])
    torch.testing.assert_close(points, torch.tensor([[128.0, 128.0], [0.0, 256.0]]))
    assert labels.tolist() == [1, 0] and labels.dtype == torch.long
    torch.testing.assert_close(t.box_to_segmenter([13, 9, 130, 90]), torch.tensor([25.6, 25.6, 256.0, 256.0]))
    np.testing.assert_allclose(t.from_segmenter(t.to_segmenter([[12.5, 7.25]])), [[12.5, 7.25]])
    with pytest.raises(ValueError, match="no resized size"):
        ImageTransforms((90, 130), 256).box_to_original([0, 0, 1, 1])
    # a mask fed back as a dense prompt: +10 inside, -10 outside, at the 256 x 256 mask size
    mask = np.zeros((90, 130), bool)
    mask[:45, 65:] = True  # the top-right quarter
    logits = mask_to_logits(mask)
    assert logits.shape == (256, 256) and logits[0, 255] == 10.0 and logits[255, 0] == -10.0
    np.testing.assert_array_equal(t.masks_to_original(logits[None])[0], mask)


def test_a_published_report_keeps_its_cited_boxes_and_loses_their_coordinates_from_the_prose():
    """Issue 20 point 4: the published model's three citation forms are boxes, not prose."""
    from citrus_v.data.boxes import parse_boxes

    answer = ('Findings: The cardiac silhouette {"Part": "heart", "bbox": "[120, 200, 340, 400]"} is normal. '
              "The 'right_lung' with bbox [127, 131, 485, 720] is clear; lung_lower_lobe_right bbox "
              "[126, 420, 485, 722] shows a nodule. Impression: a nodule.")
    boxes = parse_boxes(answer)
    report = parse_report(answer, boxes)
    assert [label for _, label in report.boxes] == ["heart", "right_lung", "lung_lower_lobe_right"]
    assert report.findings == "The cardiac silhouette is normal. The 'right_lung' is clear; lung_lower_lobe_right shows a nodule."
    assert report.impression == "a nodule."

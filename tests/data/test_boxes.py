"""Boxes: resized <-> original round trips, render -> parse, legacy forms, tolerance of bad text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citrus_v.data.boxes import (
    from_legacy_grid,
    parse_boxes,
    render_box_list,
    render_boxes,
    render_legacy_box,
    round_box,
    to_legacy_grid,
    to_original,
    to_resized,
)

sides = st.integers(min_value=28, max_value=4096)


@st.composite
def box_in_image(draw):
    h, w = draw(sides), draw(sides)
    x1 = draw(st.floats(0, w - 1, allow_nan=False))
    y1 = draw(st.floats(0, h - 1, allow_nan=False))
    x2 = draw(st.floats(x1, w, allow_nan=False))
    y2 = draw(st.floats(y1, h, allow_nan=False))
    rh, rw = draw(sides), draw(sides)
    return (x1, y1, x2, y2), (h, w), (rh, rw)


def test_to_resized_hand_case():
    # 200 x 100 (h x w) -> 56 x 112: x doubles-ish by 112/100, y by 56/200
    assert to_resized((10, 20, 50, 100), (200, 100), (56, 112)) == pytest.approx((11.2, 5.6, 56.0, 28.0))


@settings(max_examples=200, deadline=None)
@given(box_in_image())
def test_resized_original_round_trip_float(case):
    box, orig, resized = case
    back = to_original(to_resized(box, orig, resized), orig, resized)
    assert back == pytest.approx(box, rel=1e-9, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(box_in_image())
def test_integer_round_trip_error_is_half_a_resized_pixel(case):
    # what the model sees: integers in resized pixels; mapped back the error is <= half a resized pixel
    box, (h, w), (rh, rw) = case
    ints = round_box(to_resized(box, (h, w), (rh, rw)))
    back = to_original(ints, (h, w), (rh, rw))
    tol = (0.5 * w / rw + 1e-6, 0.5 * h / rh + 1e-6)
    for i, (a, b) in enumerate(zip(back, box)):
        assert abs(a - b) <= tol[i % 2]


def test_render_exact_published_form():
    text = render_boxes([((12.4, 30.6, 80, 90), "liver"), ((1, 2, 3, 4), "left kidney")])
    assert text == (
        '```json\n[{"bbox_2d": [12, 31, 80, 90], "label": "liver"}, '
        '{"bbox_2d": [1, 2, 3, 4], "label": "left kidney"}]\n```'
    )


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.tuples(*[st.integers(0, 5000)] * 4),
            st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
        ),
        max_size=5,
    )
)
def test_render_parse_round_trip(items):
    parsed = parse_boxes("Here they are:\n" + render_boxes(items) + "\nDone.")
    assert [(tuple(int(v) for v in b), lab) for b, lab in parsed] == [(tuple(b), lab) for b, lab in items]


def test_parse_without_fences_and_with_bbox_key():
    assert parse_boxes('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]') == [((1.0, 2.0, 3.0, 4.0), "a")]
    assert parse_boxes('The box is {"bbox": [5, 6, 7, 8]}.') == [((5.0, 6.0, 7.0, 8.0), "")]


@pytest.mark.parametrize(
    "text",
    ["", "no boxes here", "```json\n{{{ not json\n```", "```json\n[{\"bbox_2d\": [1, 2]}]\n```",
     '```json\n[{"bbox_2d": ["a", 2, 3, 4]}]\n```', "[1, 2, 3, 4]", "```", "<|box_start|>(1,2)<|box_end|>"],
)  # fmt: skip
def test_bad_text_gives_empty_without_crash(text):
    assert parse_boxes(text) == []


def test_truncated_json_keeps_complete_objects():
    text = '```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6'
    assert parse_boxes(text) == [((1.0, 2.0, 3.0, 4.0), "a")]


def test_legacy_absolute_and_with_ref():
    text = "<|object_ref_start|>liver<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|> and <|box_start|>(1, 2),(3, 4)<|box_end|>"
    assert parse_boxes(text) == [((100.0, 200.0, 300.0, 400.0), "liver"), ((1.0, 2.0, 3.0, 4.0), "")]


def test_legacy_normalised_grid():
    text = "<|box_start|>(100,250),(500,1000)<|box_end|>"
    # image 400 high, 800 wide: x * 800/1000, y * 400/1000
    assert parse_boxes(text, legacy_normalized=True, image_hw=(400, 800)) == [((80.0, 100.0, 400.0, 400.0), "")]
    with pytest.raises(ValueError, match="image_hw"):
        parse_boxes(text, legacy_normalized=True)


@settings(max_examples=100, deadline=None)
@given(box_in_image())
def test_legacy_render_parse_round_trip(case):
    box, hw, _ = case
    grid = to_legacy_grid(box, hw)
    (parsed, label), = parse_boxes(render_legacy_box(grid, "kidney"), legacy_normalized=True, image_hw=hw)
    assert label == "kidney"
    assert parsed == pytest.approx(from_legacy_grid(grid, hw))
    # one grid step is 1/1000 of the side: half of it is the rounding error
    for i, (a, b) in enumerate(zip(parsed, box)):
        assert abs(a - b) <= 0.5 * hw[1 - i % 2] / 1000 + 1e-6


def test_citrus_bbox_tags_and_swift_list():
    assert render_box_list((1.2, 2.7, 3, 4)) == "[1, 3, 3, 4]"
    assert parse_boxes("The nodule <bbox>[10, 20, 30, 40]</bbox> is small.") == [((10.0, 20.0, 30.0, 40.0), "")]


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="4 numbers"):
        to_resized((1, 2, 3), (10, 10), (20, 20))
    with pytest.raises(ValueError, match="orig_hw"):
        to_resized((1, 2, 3, 4), (0, 10), (20, 20))


def test_round_box_clips_to_image():
    assert round_box((-3.2, 4.6, 120.4, 99.5), hw=(50, 100)) == (0, 5, 100, 50)


# --- the citation forms of the published model's reports (issue 20 point 4) -------------------------

REPORT = (
    "Findings: The cardiac silhouette {\"Part\": \"heart\", \"bbox\": \"[120, 200, 340, 400]\"} is normal. "
    "The 'right_lung' with bbox [127, 131, 485, 720] is clear; a nodule in lung_lower_lobe_right bbox "
    "[126, 420, 485, 722]. Impression: no acute finding."
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"Part": "heart", "bbox": "[120, 200, 340, 400]"}', [((120.0, 200.0, 340.0, 400.0), "heart")]),
        ("'right_lung' with bbox [127, 131, 485, 720]", [((127.0, 131.0, 485.0, 720.0), "right_lung")]),
        ('"right lung" with bbox [127, 131, 485, 720]', [((127.0, 131.0, 485.0, 720.0), "right lung")]),
        ("lung_lower_lobe_right bbox [126, 420, 485, 722]", [((126.0, 420.0, 485.0, 722.0), "lung_lower_lobe_right")]),
        ("'liver' bbox [1, 2, 3, 4]", [((1.0, 2.0, 3.0, 4.0), "liver")]),
        # full-width punctuation, as a report written in Chinese carries it; the label is read as written
        ("\u2018right_lung\u2019 bbox \u3010127\uff0c131\uff0c485\uff0c720\u3011", [((127.0, 131.0, 485.0, 720.0), "right_lung")]),
        ("\u80ba lung bbox [1, 2, 3, 4]", [((1.0, 2.0, 3.0, 4.0), "lung")]),
    ],
)
def test_report_citation_forms_parse(text, expected):
    assert parse_boxes(text) == expected


def test_report_with_all_three_forms_gives_three_boxes_in_order():
    assert parse_boxes(REPORT) == [
        ((120.0, 200.0, 340.0, 400.0), "heart"),
        ((127.0, 131.0, 485.0, 720.0), "right_lung"),
        ((126.0, 420.0, 485.0, 722.0), "lung_lower_lobe_right"),
    ]


def test_report_forms_do_not_double_count_the_other_forms():
    """A ``bbox`` key, ``<bbox>`` tags and ``bbox_2d`` lists are each read once, not again as citations."""
    assert len(parse_boxes('{"bbox": [1, 2, 3, 4], "label": "x"}')) == 1
    assert len(parse_boxes("liver <bbox>[1, 2, 3, 4]</bbox>")) == 1
    assert len(parse_boxes('```json\n[{"bbox_2d": [1,2,3,4],"label": "x"}]\n```')) == 1
    assert parse_boxes("the bbox is unknown [1, 2]") == []

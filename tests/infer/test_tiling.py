"""Tiled prediction (``citrus_v/infer/tiling.py``): the grid, the stitching, the predictor path and the CLI flag."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from citrus_v import cli
from citrus_v.infer.predictor import Predictor
from citrus_v.infer.tiling import as_tiles, grid_for, parse_tiles, predict_tiled, stitch, tile_grid, tile_windows
from citrus_v.infer.types import Box, Mask, Prediction, Report


def test_tile_grid_aims_at_the_tile_side():
    assert tile_grid(1000, 1000) == (3, 3)  # MoNuSeg: 333 px tiles
    assert tile_grid(584, 565) == (2, 2)  # DRIVE: ~290 px
    assert tile_grid(224, 224) == (1, 1)  # a small image stays whole
    assert tile_grid(1000, 1000, tile_px=400) == (3, 3)  # 2.5 rounds half up
    assert tile_grid(100, 700, tile_px=100) == (1, 7)
    with pytest.raises(ValueError, match="at least 28"):
        tile_grid(100, 100, tile_px=10)


def test_tile_windows_cover_the_image_once():
    windows = tile_windows(90, 130, (2, 3))
    assert windows[0] == (0, 45, 0, 43) and windows[-1] == (45, 90, 87, 130)  # reading order
    cover = np.zeros((90, 130), dtype=int)
    for y0, y1, x0, x1 in windows:
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()
    with pytest.raises(ValueError, match="under 28 px"):
        tile_windows(90, 130, (4, 1))  # 22 px rows
    with pytest.raises(ValueError, match="at least one row"):
        tile_windows(90, 130, (0, 2))


def test_parse_tiles():
    assert parse_tiles("auto") == "auto"
    assert parse_tiles("3") == (3, 3)
    assert parse_tiles("2x4") == (2, 4) and parse_tiles("2X4") == (2, 4)
    for bad in ("0", "2x0", "x", "2x3x4", "-1", "two"):
        with pytest.raises(ValueError, match="expected auto"):
            parse_tiles(bad)


def test_as_tiles_takes_what_python_and_json_callers_pass():
    assert as_tiles("auto") == "auto" and as_tiles("2x3") == (2, 3) and as_tiles("4") == (4, 4)
    assert as_tiles(2) == (2, 2) and as_tiles((1, 3)) == (1, 3) and as_tiles([3, 1]) == (3, 1)
    for bad in ("2x", True, 2.5, 0, (2,), (2, 0), [2, "3"], None, {"rows": 2}):
        with pytest.raises(ValueError, match="expected"):
            as_tiles(bad)
    assert grid_for("auto", 1000, 1000) == (3, 3) and grid_for("1x2", 90, 130) == (1, 2)
    assert grid_for("auto", 20, 20) == (1, 1) and grid_for("1x4", 20, 130) == (1, 4)  # an uncut axis may be small
    with pytest.raises(ValueError, match="a 2x2 grid cuts this 20x20 image into tiles under 28 px"):
        grid_for(2, 20, 20)


def _tile_prediction(answer: str, mask: np.ndarray | None, box: list[float] | None, prob: float) -> Prediction:
    return Prediction(
        answer=answer, raw_text=answer, boxes=[] if box is None else [Box(box, "polyp", text_bbox=box, score=0.5)],
        masks=[] if mask is None else [Mask(mask, score=prob, label="nuclei")], mean_token_prob=prob,
        num_generated_tokens=5, num_prompt_tokens=10,
    )


def test_stitch_places_masks_and_boxes_at_their_tiles():
    windows = [(0, 2, 0, 3), (0, 2, 3, 5)]  # a 2x5 image cut into a 2x3 and a 2x2 tile
    left = np.array([[1, 0, 0], [0, 0, 1]], dtype=bool)
    right = np.array([[0, 1], [1, 1]], dtype=bool)
    preds = [_tile_prediction("Sure, it is [SEG].", left, [0, 0, 1, 1], 0.6),
             _tile_prediction("Sure, it is [SEG].", right, [1, 0, 2, 2], 0.8)]
    out = stitch(preds, windows, (2, 5))
    expected = np.array([[1, 0, 0, 0, 1], [0, 0, 1, 1, 1]], dtype=bool)
    assert len(out.masks) == 1 and np.array_equal(out.masks[0].mask, expected)
    assert out.masks[0].score == pytest.approx(0.7) and out.masks[0].label == "nuclei"
    assert [b.bbox for b in out.boxes] == [[0, 0, 1, 1], [4, 0, 5, 2]]  # the second moved 3 px right
    assert out.boxes[1].text_bbox == [4, 0, 5, 2]
    assert out.mean_token_prob == pytest.approx(0.7)
    assert (out.num_generated_tokens, out.num_prompt_tokens) == (10, 20)
    assert [t.to_dict() for t in out.tiles] == [
        {"window": [0, 2, 0, 3], "answer": "Sure, it is [SEG].", "num_masks": 1, "num_generated_tokens": 5},
        {"window": [0, 2, 3, 5], "answer": "Sure, it is [SEG].", "num_masks": 1, "num_generated_tokens": 5}]


def test_stitch_takes_the_answer_most_tiles_gave():
    windows = tile_windows(60, 90, (2, 3))
    answers = ["no", "yes", "yes", "no", "maybe", "no"]
    preds = [_tile_prediction(a, None, None, 0.5) for a in answers]
    preds[3].report = Report("findings", "impression", [Box([1, 2, 3, 4], "x")])
    out = stitch(preds, windows, (60, 90))
    assert out.answer == "no" and out.masks == []
    assert out.report is None  # the first "no" tile (tile 0) wrote no report
    tie = stitch([preds[3], preds[1]], windows[3:5], (60, 90))  # "no" (tile at y 30, x 0) vs "yes": the first wins
    assert tie.answer == "no" and tie.report.boxes[0].bbox == [1, 32, 3, 34]
    with pytest.raises(ValueError, match="2 predictions for 3 tiles"):
        stitch(preds[:2], windows[:3], (60, 90))


def test_stitch_answers_from_the_tiles_with_the_most_masks():
    # three tiles answered without [SEG] and two with one: the masks' answer wins, so answer and masks agree
    windows = tile_windows(60, 150, (1, 5))
    one = np.ones((60, 30), dtype=bool)
    preds = [_tile_prediction("lab value", None, None, 0.5), _tile_prediction("Sure, it is [SEG].", one, None, 0.5),
             _tile_prediction("lab value", None, None, 0.5), _tile_prediction("Sure, it is [SEG].", one, None, 0.5),
             _tile_prediction("lab value", None, None, 0.5)]
    out = stitch(preds, windows, (60, 150))
    assert out.answer == "Sure, it is [SEG]." and len(out.masks) == 1
    assert [t.num_masks for t in out.tiles] == [0, 1, 0, 1, 0]


def test_stitch_keeps_every_mask_index():
    windows = [(0, 4, 0, 4), (0, 4, 4, 8)]
    one = np.ones((4, 4), dtype=bool)
    two_masks = _tile_prediction("a", one, None, 0.4)
    two_masks.masks.append(Mask(one.copy(), score=0.9, label="second"))
    out = stitch([_tile_prediction("a", one, None, 0.2), two_masks], windows, (4, 8))
    assert len(out.masks) == 2
    assert out.masks[0].mask.all() and out.masks[0].score == pytest.approx(0.3)
    assert out.masks[1].mask[:, 4:].all() and not out.masks[1].mask[:, :4].any() and out.masks[1].label == "second"


def test_predict_tiled_equals_the_tiles_predicted_one_by_one(predictor, scripted, image):
    answer = "Sure, it is [SEG]."
    windows = tile_windows(*image.shape[:2], (1, 2))
    expected = np.zeros(image.shape[:2], dtype=bool)
    for y0, y1, x0, x1 in windows:
        scripted(answer)
        (tile,) = predictor.predict_batch([(np.ascontiguousarray(image[y0:y1, x0:x1]), "Segment the liver.")])
        assert tile.masks, "the scripted answer holds a [SEG]"
        expected[y0:y1, x0:x1] = tile.masks[0].mask
    scripted(answer)
    done = []
    out = predict_tiled(predictor, image, "Segment the liver.", (1, 2), batch_size=1, progress=done.append)
    # batch_size 1 runs two generation calls: the script covers the first; the second tile is re-scripted below
    assert done == [1, 2] and [t.window for t in out.tiles] == windows
    scripted(answer)
    out = predictor.predict_tiled(image, "Segment the liver.", (1, 2), batch_size=2)
    assert out.answer.startswith(answer) and len(out.masks) == 1
    np.testing.assert_array_equal(out.masks[0].mask, expected)


def test_predict_tiled_refuses_what_is_not_a_grid(predictor, image):
    for bad in ("2x", 2.5, True):
        with pytest.raises(ValueError, match="tiles: .*expected"):
            predictor.predict_tiled(image, "Segment the liver.", bad)


def test_predict_tiled_refuses_an_image_session(predictor, image):
    with pytest.raises(ValueError, match="not an image session"):
        predictor.predict_tiled(predictor.image_session(image), "Segment the liver.")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        predictor.predict_tiled(image, "Segment the liver.", batch_size=0)


def test_cli_tiles_json(tmp_path, image, predictor, scripted, monkeypatch, capsys):
    png = tmp_path / "tissue.png"
    Image.fromarray(image).save(png)
    scripted("Sure, it is [SEG].")
    monkeypatch.setattr(Predictor, "from_pretrained", classmethod(lambda cls, *a, **kw: predictor))
    argv = ["predict", "--image", str(png), "--prompt", "Segment the nuclei.", "--tiles", "1x2", "--json",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tiles"]["grid"] == [1, 2]
    assert [t["window"] for t in result["tiles"]["tiles"]] == [[0, 90, 0, 65], [0, 90, 65, 130]]
    assert sum(result["tiles"]["answers"].values()) == 2
    assert np.asarray(Image.open(result["masks"][0])).shape == (90, 130)  # stitched at the image's size


def test_cli_tiles_bad_value_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", "--image", str(tmp_path / "x.png"), "--prompt", "Segment.", "--tiles", "0"])
    assert exit_info.value.code == 2
    assert "argument --tiles: '0': expected auto, N" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tiles", "4x1"], "citrus-v predict: --tiles 4x1: a 4x1 grid cuts this 90x130 image into tiles under 28 px a side"),
        (["--tiles", "2", "--box", "1,1,20,20"], "citrus-v predict: --tiles goes with --image alone, not with --volume"),
        (["--tiles", "auto", "--image", "SAME"], "citrus-v predict: --tiles takes one --image, got 2"),
    ],
)
def test_cli_tiles_errors_name_the_flag(tmp_path, image, predictor, monkeypatch, capsys, extra, message):
    png = tmp_path / "tissue.png"
    Image.fromarray(image).save(png)
    monkeypatch.setattr(Predictor, "from_pretrained", classmethod(lambda cls, *a, **kw: predictor))
    extra = [str(png) if arg == "SAME" else arg for arg in extra]
    assert cli.main(["predict", "--image", str(png), "--prompt", "Segment the nuclei.", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1

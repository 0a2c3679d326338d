"""The published training text (issue 20 point 7) and ms-swift grounding records (point 8).

Expected strings are written by hand from the published template's facts (swift/llm/template/template/
citrus.py in the published fork; docs/published_checkpoint.md cites the lines): ``<ref-object>`` wrapped in
``<|object_ref_start|>``/``<|object_ref_end|>``; each box object ``json.dumps``-ed with ``(",", ": ")``, one
per line inside ``[``/``]`` and a ```` ```json ```` fence; several ``<bbox>`` merged into one list at the first,
every box labelled by the first ref; a user-turn ``<bbox>`` rendered the same way; boxes scaled once to the
resized image, ``round(x / width * resized_width)``.

The image is 150 x 100 (W x H); the tiny config resizes it to 140 x 112, so [30, 20, 90, 60] -> [28, 22, 84, 67].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from citrus_v.cli import main
from citrus_v.data.checks import FileRules
from citrus_v.data.dataset import JsonlDataset
from citrus_v.data.image_processing import ImageConfig
from citrus_v.data.placeholders import fill_box_placeholders, template_style_for
from citrus_v.data.schema import Message, Record, RecordError
from citrus_v.data.template import ChatTemplate
from citrus_v.data.tokenizer import build_qwen25_tokenizer

PADS = "<|vision_start|>" + "<|image_pad|>" * 20 + "<|vision_end|>"  # 112 x 140 -> 4 x 5 merged tokens
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
FENCE = "```json\n[\n{}\n]\n```"


@pytest.fixture(scope="module")
def qwen():
    return build_qwen25_tokenizer()


@pytest.fixture(scope="module")
def published(qwen):
    return ChatTemplate(qwen, ImageConfig.tiny(), style="published")


@pytest.fixture(scope="module")
def ours(qwen):
    return ChatTemplate(qwen, ImageConfig.tiny())


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)).save(d / "a.png")
    return d


def rec(messages, objects, **kw) -> Record:
    return Record.from_dict({"messages": [{"role": r, "content": c} for r, c in messages], "images": ["a.png"],
                             "objects": objects, **kw})


def text_of(template: ChatTemplate, r: Record, files: Path) -> str:
    return template.tokenizer.decode(template.encode_record(r, files).input_ids)


def turn(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


# --- point 7: the published text, byte for byte -------------------------------------------------------


def test_single_box_and_ref(published, files):
    r = rec([("user", "<image>Find the <ref-object>"), ("assistant", "<bbox>")],
            {"ref": ["liver"], "bbox": [[30, 20, 90, 60]]})
    box = FENCE.format('{"bbox_2d": [28,22,84,67],"label": "liver"}')
    assert text_of(published, r, files) == (
        SYSTEM + turn("user", PADS + "Find the <|object_ref_start|>liver<|object_ref_end|>") + turn("assistant", box))


def test_one_ref_several_boxes_merge_into_one_list(published, files):
    """ms-swift's documented second example: one ref, ``<bbox><bbox>``."""
    r = rec([("user", "<image>Find the <ref-object> in the image"), ("assistant", "<bbox><bbox>")],
            {"ref": ["sheep"], "bbox": [[30, 20, 90, 60], [0, 0, 150, 100]]})
    box = FENCE.format('{"bbox_2d": [28,22,84,67],"label": "sheep"},\n{"bbox_2d": [0,0,140,112],"label": "sheep"}')
    assert text_of(published, r, files).endswith(turn("assistant", box))


def test_refs_and_boxes_interleaved_put_every_box_at_the_first_bbox(published, files):
    """ms-swift's documented first example: as published, the first ``<bbox>`` takes all boxes, each
    labelled by the first ref, and the second ``<bbox>`` becomes nothing."""
    r = rec([("user", "<image>Describe the image."),
             ("assistant", "<ref-object><bbox> and <ref-object><bbox> are in the image")],
            {"ref": ["a dog", "a woman"], "bbox": [[30, 20, 90, 60], [0, 0, 150, 100]]})
    box = FENCE.format('{"bbox_2d": [28,22,84,67],"label": "a dog"},\n{"bbox_2d": [0,0,140,112],"label": "a dog"}')
    want = ("<|object_ref_start|>a dog<|object_ref_end|>" + box
            + " and <|object_ref_start|>a woman<|object_ref_end|> are in the image")
    assert text_of(published, r, files).endswith(turn("assistant", want))


def test_user_turn_bbox_is_rendered(published, ours, files):
    r = rec([("user", "<image>What is <bbox>?"), ("assistant", "<ref-object>")],
            {"ref": ["liver"], "bbox": [[30, 20, 90, 60]]})
    box = FENCE.format('{"bbox_2d": [28,22,84,67],"label": "liver"}')
    assert text_of(published, r, files) == (
        SYSTEM + turn("user", PADS + f"What is {box}?") + turn("assistant", "<|object_ref_start|>liver<|object_ref_end|>"))
    assert "What is <bbox>?" in text_of(ours, r, files)  # ours leaves a user-turn <bbox> as written


def test_box_without_ref_is_labelled_object_and_labels_stay_unescaped(published, files):
    r = rec([("user", "<image>Find it"), ("assistant", "<bbox>")], {"ref": [], "bbox": [[30, 20, 90, 60]]})
    assert text_of(published, r, files).endswith(turn("assistant", FENCE.format('{"bbox_2d": [28,22,84,67],"label": "object"}')))
    r = rec([("user", "<image><ref-object>"), ("assistant", "<bbox>")], {"ref": ["肝脏"], "bbox": [[30, 20, 90, 60]]})
    assert text_of(published, r, files).endswith(turn("assistant", FENCE.format('{"bbox_2d": [28,22,84,67],"label": "肝脏"}')))


def test_our_boxes_placeholder_in_the_published_layout(published, files):
    r = rec([("user", "<image>Find the organs."), ("assistant", "Here: <boxes>")],
            {"ref": ["liver", "body"], "bbox": [[30, 20, 90, 60], [0, 0, 150, 100]]})
    box = FENCE.format('{"bbox_2d": [28,22,84,67],"label": "liver"},\n{"bbox_2d": [0,0,140,112],"label": "body"}')
    assert text_of(published, r, files).endswith(turn("assistant", "Here: " + box))


def test_single_box_is_scaled_once_not_twice():
    """The published single-box path scales the resized box again by resized/original (int, then clamp):
    [28, 22, 84, 67] would become [int(28*140/150), int(22*112/100), int(84*140/150), int(67*112/100)]
    = [26, 24, 78, 75]. Ours writes the once-scaled box."""
    msgs = [Message("user", "<image>x"), Message("assistant", "<bbox>")]
    rec_ = Record(msgs, images=["a.png"], objects=Record.from_dict(
        {"messages": [{"role": "assistant", "content": "x"}], "objects": {"ref": ["a"], "bbox": [[30, 20, 90, 60]]}}).objects)
    out = fill_box_placeholders(rec_.messages, rec_.objects, [(100, 150)], [(112, 140)], "published")[1].content
    twice = [int(28 * 140 / 150), int(22 * 112 / 100), int(84 * 140 / 150), int(67 * 112 / 100)]
    assert twice == [26, 24, 78, 75]
    assert '"bbox_2d": [28,22,84,67]' in out and json.dumps(twice, separators=(",", ":")) not in out


def test_published_rounding_divides_before_multiplying():
    """round(x / w * rw), Python rounding: 75 / 150 * 141 = 70.5 -> 70 (ties to even)."""
    objects = Record.from_dict({"messages": [{"role": "assistant", "content": "x"}],
                                "objects": {"ref": ["a"], "bbox": [[75, 0, 75, 0]]}}).objects
    out = fill_box_placeholders([Message("assistant", "<bbox>")], objects, [(100, 150)], [(112, 141)], "published")
    assert '"bbox_2d": [70,0,70,0]' in out[0].content


def test_style_defaults():
    assert template_style_for("published") == "published" and template_style_for("8b") == "published"
    assert template_style_for("tiny") == "ours" and template_style_for("custom") == "ours"
    assert template_style_for("8b", "ours") == "ours" and template_style_for("tiny", "published") == "published"
    with pytest.raises(ValueError, match="template style 'x'"):
        template_style_for("tiny", "x")


# --- point 8: ms-swift grounding records ---------------------------------------------------------------


def test_norm1_boxes_are_fractions_of_the_image(published, ours, files):
    """Today's bug: norm1 read as pixels. 0.2 x 150 = 30, 0.2 x 100 = 20, ...: the same text as the pixel record."""
    msgs = [("user", "<image>Find the <ref-object>"), ("assistant", "<bbox>")]
    real = rec(msgs, {"ref": ["liver"], "bbox": [[30, 20, 90, 60]]})
    norm1 = rec(msgs, {"ref": ["liver"], "bbox": [[0.2, 0.2, 0.6, 0.6]], "bbox_type": "norm1"})
    for template in (published, ours):
        assert text_of(template, norm1, files) == text_of(template, real, files)
    assert "[28, 22, 84, 67]" in text_of(ours, norm1, files)
    assert norm1.to_dict()["objects"]["bbox_type"] == "norm1"


def test_one_ref_for_several_boxes_in_our_rendering(ours, files):
    r = rec([("user", "<image>Find the <ref-object>"), ("assistant", "<boxes>")],
            {"ref": ["sheep"], "bbox": [[30, 20, 90, 60], [0, 0, 150, 100]]})
    assert ('[{"bbox_2d": [28, 22, 84, 67], "label": "sheep"}, {"bbox_2d": [0, 0, 140, 112], "label": "sheep"}]'
            in text_of(ours, r, files))


REFUSED = [
    ({"ref": [], "bbox": [[615, 226]]}, r"objects.bbox\[0\]': a point \[615, 226\]"),  # ms-swift's third example
    ({"ref": ["a"], "bbox": [[1, 2, 3, 4]], "bbox_type": "norm1000"}, r"objects.bbox_type': 'norm1000' is not read"),
    ({"ref": ["a"], "bbox": [[1, 2, 3, 4]], "bbox_type": "xyxy"}, r"objects.bbox_type': 'xyxy' is not one of"),
    ({"ref": ["a"], "bbox": [[0.1, 0.2, 1.5, 0.4]], "bbox_type": "norm1"}, r"objects.bbox\[0\]': bbox_type 'norm1' box"),
    ({"ref": ["a"], "bbox": [[1, 2, 3, 4]], "image_id": [1]}, r"objects.image_id\[0\]': box 0 is on image 1"),
    ({"ref": ["a"], "bbox": [[1, 2, 3, 4]], "width": [10]}, r"objects.width': unknown key"),
    ({"ref": ["a", "b"], "bbox": [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]}, r"'objects': 2 refs but 3 boxes"),
]


@pytest.mark.parametrize("objects, message", REFUSED)
def test_what_the_published_template_cannot_read_is_refused_naming_the_field(objects, message):
    with pytest.raises(RecordError, match=message):
        rec([("user", "<image>Find it"), ("assistant", "<bbox>")], objects)


def _write(tmp_path: Path, files: Path, objects: dict) -> Path:
    (tmp_path / "a.png").write_bytes((files / "a.png").read_bytes())
    line = {"messages": [{"role": "user", "content": "<image>Find it"}, {"role": "assistant", "content": "<bbox>"}],
            "images": ["a.png"], "objects": objects}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("objects, message", REFUSED[:2])
def test_refused_by_data_validate_and_by_training(objects, message, ours, files, tmp_path, capsys):
    path = _write(tmp_path, files, objects)
    assert main(["data", "validate", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(RecordError, match=rf"d.jsonl:1: field '{message}"):
        JsonlDataset(path, ours, rules=FileRules())


def test_documented_examples_one_and_two_pass_validate_with_files(files, tmp_path, capsys):
    for objects in ({"ref": ["a dog", "a woman"], "bbox": [[30, 20, 90, 60], [0, 0, 150, 100]]},
                    {"ref": ["sheep"], "bbox": [[30, 20, 90, 60], [0, 0, 150, 100]]},
                    {"ref": ["sheep"], "bbox": [[0.2, 0.2, 0.6, 0.6]], "bbox_type": "norm1"}):
        assert main(["data", "validate", str(_write(tmp_path, files, objects)), "--check-files"]) == 0
    bad = _write(tmp_path, files, {"ref": ["a"], "bbox": [[30, 20, 900, 60]]})
    assert main(["data", "validate", str(bad), "--check-files"]) == 1
    captured = capsys.readouterr()
    assert "field 'objects.bbox[0]': box [30.0, 20.0, 900.0, 60.0] lies outside its image" in captured.out + captured.err

"""ChatML encoding: exact labels, image token counts, boxes, [SEG]/mask bookkeeping, truncation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from citrus_v.data.boxes import parse_boxes, to_original
from citrus_v.data.dataset import JsonlDataset
from citrus_v.data.image_processing import IMAGENET_MEAN, IMAGENET_STD, ImageConfig
from citrus_v.data.phantoms.suite import iter_texts
from citrus_v.data.schema import Message, Record
from citrus_v.data.template import ChatTemplate, TooLongError
from citrus_v.data.tokenizer import build_qwen25_tokenizer, train_tiny_tokenizer

CHAT_TEXT = ["Please segment the liver.", "Sure, it is [SEG].", "What organ is this?", "The liver.", "Find the kidney."]


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer(list(iter_texts(n=20)) + CHAT_TEXT * 20, vocab_size=800)


@pytest.fixture(scope="module")
def template(tok):
    return ChatTemplate(tok, ImageConfig.tiny())


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)).save(d / "a.png")  # h 100, w 150
    Image.fromarray(rng.integers(0, 256, (300, 200), dtype=np.uint8)).save(d / "b.png")  # grey, portrait
    m = np.zeros((100, 150), np.uint8)
    m[20:60, 30:90] = 255  # 40 x 60 of 100 x 150: 16 % of the image
    Image.fromarray(m).save(d / "a_mask.png")
    Image.fromarray(np.zeros((100, 150), np.uint8)).save(d / "empty_mask.png")
    return d


def rec(messages, **kw) -> Record:
    return Record.from_dict({"messages": [{"role": r, "content": c} for r, c in messages], **kw})


def labelled_spans(labels: torch.Tensor) -> list[tuple[int, int]]:
    on = (labels != -100).tolist() + [False]
    spans, start = [], None
    for i, v in enumerate(on):
        if v and start is None:
            start = i
        if not v and start is not None:
            spans.append((start, i))
            start = None
    return spans


def test_labels_are_exactly_assistant_text_and_im_end(template, tok, files):
    r = rec([("user", "<image>Please segment the liver."), ("assistant", "Sure, it is [SEG].")], images=["a.png"], masks=["a_mask.png"])
    ex = template.encode_record(r, files)
    lab = ex.labels[ex.labels != -100]
    assert tok.decode(lab) == "Sure, it is [SEG].<|im_end|>"
    # labels equal input_ids where set; the "\n" after <|im_end|> is not supervised
    keep = ex.labels != -100
    assert torch.equal(ex.labels[keep], ex.input_ids[keep])
    (s, e), = labelled_spans(ex.labels)
    assert tok.decode(ex.input_ids[:s]).endswith("<|im_start|>assistant\n")
    assert tok.decode(ex.input_ids[e:]) == "\n"


def test_multi_turn_labels_each_assistant_turn(template, tok):
    msgs = [("system", "Be brief."), ("user", "What organ is this?"), ("assistant", "The liver."),
            ("user", "Find the kidney."), ("assistant", "Left kidney.")]  # fmt: skip
    ex = template.encode_record(rec(msgs), ".")
    spans = labelled_spans(ex.labels)
    assert [tok.decode(ex.input_ids[s:e]) for s, e in spans] == ["The liver.<|im_end|>", "Left kidney.<|im_end|>"]
    text = tok.decode(ex.input_ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")  # no default system added
    assert text.count("You are a helpful assistant.") == 0


def test_piecewise_encoding_equals_whole_string(template, tok, files):
    r = rec([("user", "<image>Please segment the liver."), ("assistant", "Sure, it is [SEG].")], images=["a.png"], masks=["a_mask.png"])
    ex = template.encode_record(r, files)
    n = template.processor.num_image_tokens(ex.image_grid_thw[0])
    whole = tok.encode(template.render(r.messages, [n]), add_special_tokens=False)
    assert ex.input_ids.tolist() == whole


def test_image_tokens_are_thw_over_four(template, files):
    r = rec([("user", "<image>and<image>What organ is this?"), ("assistant", "The liver.")], images=["a.png", "b.png"])
    ex = template.encode_record(r, files)
    # 100 x 150 -> 112 x 140 (multiples of 28, >= 112*112 px); 300 x 200 -> 252 x 168 (<= 224*224 px)
    assert ex.resized_hw == [(112, 140), (252, 168)] and ex.orig_hw == [(100, 150), (300, 200)]
    assert ex.image_grid_thw.tolist() == [[1, 8, 10], [1, 18, 12]]
    assert ex.pixel_values.shape == (8 * 10 + 18 * 12, 3 * 2 * 14 * 14)
    ids = ex.input_ids.tolist()
    ids_ = template.ids
    assert ids.count(ids_.image_pad) == 8 * 10 // 4 + 18 * 12 // 4 == 20 + 54
    first = ids.index(ids_.vision_start)
    assert ids[first + 1 : first + 21] == [ids_.image_pad] * 20 and ids[first + 21] == ids_.vision_end
    assert ex.sam_images.shape == (2, 3, 256, 256)


def test_sam_image_is_stretched_and_imagenet_normalised(template):
    white = np.full((30, 90, 3), 255, np.uint8)
    ex = template.encode_prompt([white], "What organ is this?")
    expect = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert ex.sam_images.shape == (1, 3, 256, 256)
    torch.testing.assert_close(ex.sam_images[0].mean(dim=(1, 2)), expect)


def test_gt_masks_binary_nearest_resized(template, files):
    r = rec([("user", "<image>Please segment the liver."), ("assistant", "Sure, it is [SEG] and [SEG].")],
            images=["a.png"], masks=["a_mask.png", "empty_mask.png"])  # fmt: skip
    ex = template.encode_record(r, files)
    assert ex.gt_masks.shape == (2, 256, 256) and ex.gt_masks.dtype == torch.float32
    assert set(ex.gt_masks.unique().tolist()) == {0.0, 1.0}
    assert ex.gt_masks[0].mean().item() == pytest.approx(0.16, abs=0.01)
    assert ex.gt_masks[1].sum().item() == 0
    ys, xs = torch.nonzero(ex.gt_masks[0], as_tuple=True)
    assert (ys.min().item(), xs.min().item()) == pytest.approx((20 * 2.56, 30 * 256 / 150), abs=2)


def test_seg_count_mismatch_names_both_numbers(template, files):
    # a literal [SEG] in the question is still a [SEG] token the model would read a mask for
    r = rec([("user", "<image>What is [SEG]?"), ("assistant", "Sure, it is [SEG].")], images=["a.png"], masks=["a_mask.png"])
    with pytest.raises(ValueError, match=r"2 \[SEG\] tokens in the text but 1 masks"):
        template.encode_record(r, files)


def test_image_token_mismatch_names_both_numbers(template, files):
    r = rec([("user", "<image>Look <|image_pad|>"), ("assistant", "The liver.")], images=["a.png"])
    with pytest.raises(ValueError, match=r"21 <\|image_pad\|> tokens in the text but the images need 20"):
        template.encode_record(r, files)
    with pytest.raises(ValueError, match="2 '<image>' placeholders but 1 images"):
        template.encode_prompt([files / "a.png"], "<image><image>What organ is this?")


def test_boxes_in_resized_pixels_map_back_to_original(template, tok, files):
    orig = [[30.0, 20.0, 90.0, 60.0], [0.0, 0.0, 150.0, 100.0]]
    r = rec([("user", "<image>Find the kidney."), ("assistant", "Here: <boxes>")], images=["a.png"],
            objects={"ref": ["liver", "body"], "bbox": orig})  # fmt: skip
    ex = template.encode_record(r, files)
    answer = tok.decode(ex.labels[ex.labels != -100], skip_special_tokens=True)
    assert answer == 'Here: ```json\n[{"bbox_2d": [28, 22, 84, 67], "label": "liver"}, {"bbox_2d": [0, 0, 140, 112], "label": "body"}]\n```'
    parsed = parse_boxes(answer)
    assert [lab for _, lab in parsed] == ["liver", "body"]
    (h, w), (rh, rw) = ex.orig_hw[0], ex.resized_hw[0]
    for (box, _), want in zip(parsed, orig):
        back = to_original(box, (h, w), (rh, rw))
        assert back == pytest.approx(want, abs=0.5 * max(w / rw, h / rh) + 1e-6)


def test_swift_ref_object_and_bbox_placeholders(template, tok, files):
    r = rec([("user", "<image>Where is the <ref-object>?"), ("assistant", "It is at <bbox>.")], images=["a.png"],
            objects={"ref": ["liver"], "bbox": [[30, 20, 90, 60]]})  # fmt: skip
    text = tok.decode(template.encode_record(r, files).input_ids)
    assert "Where is the liver?" in text and "It is at [28, 22, 84, 67].<|im_end|>" in text
    literal = rec([("user", "<image>Where?"), ("assistant", "It is <bbox>[1, 2, 3, 4]</bbox>.")], images=["a.png"])
    assert "<bbox>[1, 2, 3, 4]</bbox>" in tok.decode(template.encode_record(literal, files).input_ids)
    no_objects = rec([("user", "<image>Where?"), ("assistant", "<boxes>")], images=["a.png"])
    with pytest.raises(ValueError, match="no objects"):
        template.encode_record(no_objects, files)


def test_inference_prompt(template, tok, files):
    pil = Image.open(files / "a.png")
    ex = template.encode_prompt([pil], "Please segment the liver.")
    text = tok.decode(ex.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>")
    assert text.endswith("<|vision_end|>Please segment the liver.<|im_end|>\n<|im_start|>assistant\n")
    assert (ex.labels == -100).all() and ex.gt_masks.shape == (0, 256, 256)
    no_sys = template.encode_prompt([], "What organ is this?", system=None)
    assert tok.decode(no_sys.input_ids) == "<|im_start|>user\nWhat organ is this?<|im_end|>\n<|im_start|>assistant\n"
    assert no_sys.pixel_values.shape == (0, 1176) and no_sys.image_grid_thw.shape == (0, 3)


def test_truncation(tok, files):
    long_answer = "The liver. " * 40
    r = rec([("user", "<image>What organ is this?"), ("assistant", long_answer)], images=["a.png"])
    full = ChatTemplate(tok, ImageConfig.tiny()).encode_record(r, files)
    cap = int(full.input_ids.shape[0]) - 30
    with pytest.raises(TooLongError, match=f"{full.input_ids.shape[0]} tokens, max_length is {cap}"):
        ChatTemplate(tok, ImageConfig.tiny(), max_length=cap).encode_record(r, files)
    cut = ChatTemplate(tok, ImageConfig.tiny(), max_length=cap, truncation="right").encode_record(r, files)
    assert cut.input_ids.shape == (cap,) and cut.truncated == 30
    assert torch.equal(cut.input_ids, full.input_ids[:cap]) and torch.equal(cut.labels, full.labels[:cap])
    # a cut through the image tokens is refused, never done
    with pytest.raises(TooLongError, match="split an image"):
        ChatTemplate(tok, ImageConfig.tiny(), max_length=30, truncation="right").encode_record(r, files)
    seg = rec([("user", "<image>Please segment the liver."), ("assistant", long_answer + "[SEG]")], images=["a.png"], masks=["a_mask.png"])
    with pytest.raises(TooLongError, match=r"\[SEG\]"):
        ChatTemplate(tok, ImageConfig.tiny(), max_length=cap, truncation="right").encode_record(seg, files)


def test_dataset_over_jsonl(tok, files):
    lines = [
        {"messages": [{"role": "user", "content": "<image>Please segment the liver."},
                      {"role": "assistant", "content": "Sure, it is [SEG]."}], "images": ["a.png"], "masks": ["a_mask.png"]},
        {"messages": [{"role": "user", "content": "What organ is this? " * 50}, {"role": "assistant", "content": "The liver."}]},
    ]  # fmt: skip
    path = files / "train.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ds = JsonlDataset(path, ChatTemplate(tok, ImageConfig.tiny(), max_length=100), skip_too_long=True)
    assert len(ds) == 2
    assert ds[0].gt_masks.shape == (1, 256, 256)
    assert ds[1].gt_masks.shape == (1, 256, 256) and ds.too_long == [1]  # record 1 too long: record 0 instead
    strict = JsonlDataset(path, ChatTemplate(tok, ImageConfig.tiny(), max_length=100))
    with pytest.raises(TooLongError, match=r"train.jsonl: record 1: .* tokens, max_length is 100"):
        strict[1]


def test_qwen_tokenizer_template_ids(files):
    qwen = build_qwen25_tokenizer()
    t = ChatTemplate(qwen, ImageConfig.tiny())
    r = rec([("user", "<image>请分割肝脏。"), ("assistant", "Sure, it is [SEG].")], images=["a.png"], masks=["a_mask.png"])
    ex = t.encode_record(r, files)
    ids = ex.input_ids.tolist()
    assert ids[0] == 151644 and ids.count(151655) == 20 and ids.count(151665) == 1
    assert ids[-2:] == [151645, 198]  # <|im_end|> "\n"
    assert ids == qwen.encode(t.render(r.messages, [20]), add_special_tokens=False)
    assert qwen.decode(ex.labels[ex.labels != -100]) == "Sure, it is [SEG].<|im_end|>"


def test_assistant_image_is_rejected(template):
    with pytest.raises(ValueError, match=r"messages\[2\]: '<image>' in an assistant message"):
        template._encode_messages([Message("user", "hi"), Message("assistant", "<image>")], [], add_generation_prompt=False)


def test_image_config_follows_the_model_config():
    from citrus_v.config import CitrusVConfig

    for name, sam in (("tiny", 256), ("8b", 1024)):
        cfg = ImageConfig.for_model(CitrusVConfig.preset(name), min_pixels=200704, max_pixels=1003520)
        assert (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size, cfg.sam_image_size) == (14, 2, 2, sam)
    with pytest.raises(ValueError, match="min_pixels 50000 > max_pixels 40000"):
        ImageConfig(min_pixels=50000, max_pixels=40000)


def test_copy_points_pair_the_answer_characters_with_the_image_tokens_holding_them(template, tok, files):
    # a.png is 100 x 150 -> 112 x 140 for the ViT: 4 x 5 merged tokens of 28 px
    r = Record([Message("user", "<image>What is the glucose value?"), Message("assistant", "12 mg/dL"),
                Message("user", "And the sodium?"), Message("assistant", "7")],
               images=["a.png"], meta={"copy_points": [[[0, 0], [149, 99]], [[60, 30]]]})
    ex = template.encode_record(r, files)
    pads = (ex.input_ids == template.ids.image_pad).nonzero().flatten().tolist()
    (s1, _), (s2, _) = labelled_spans(ex.labels)
    # (60, 30) -> (56, 33.6) resized: column 2, row 1 -> token 7
    assert ex.copy_pairs.tolist() == [[s1 - 1, pads[0]], [s1, pads[19]], [s2 - 1, pads[7]]]
    assert tok.decode(ex.labels[s1 : s1 + 2]) == "12" and tok.decode(ex.labels[s2 : s2 + 1]) == "7"
    assert template.encode_record(rec([("user", "<image>Hi"), ("assistant", "12")], images=["a.png"]), files).copy_pairs.shape == (0, 2)
    # a cut answer keeps the pairs of the characters left before the cut
    cut = ChatTemplate(tok, ImageConfig.tiny(), max_length=s1 + 1, truncation="right").encode_record(r, files)
    assert cut.copy_pairs.tolist() == [[s1 - 1, pads[0]]]


@pytest.mark.parametrize("points, message", [
    ([[[1, 1]]], r"meta\.copy_points: must be a list with one entry per assistant turn \(2\)"),
    ([[[1, 1]], [[150, 1]]], r"meta\.copy_points\[1\]\[0\]: must be \[x, y\] inside the 150x100 image"),
    ([[[1, 1]], [[1, 1], [2, 2]]], r"meta\.copy_points\[1\]: must be a list of at most 1 points"),
    ([[["a", 1]], []], r"meta\.copy_points\[0\]\[0\]: must be \[x, y\]"),
])
def test_copy_points_that_do_not_fit_the_record_name_the_field(template, files, points, message):
    r = Record([Message("user", "<image>Q?"), Message("assistant", "12"), Message("user", "Q?"), Message("assistant", "7")],
               images=["a.png"], meta={"copy_points": points})
    with pytest.raises(ValueError, match=message):
        template.encode_record(r, files)
    with pytest.raises(ValueError, match="meta.copy_points: the record has no image"):
        template.encode_record(Record([Message("user", "Q?"), Message("assistant", "12")], meta={"copy_points": [[]]}), files)


def test_suite_pages_point_each_answer_character_at_a_token_that_shows_it(template, tok, tmp_path):
    from citrus_v.data.phantoms import document
    from citrus_v.data.phantoms.suite import SuiteConfig, document_pages

    path = document_pages(tmp_path, 4, seed=2, progress=False)
    data = JsonlDataset(path, template)
    chars = "0123456789."
    for i, r in enumerate(data.records):
        ex = data[i]
        page = document.render(np.random.default_rng(r.meta["sample_seed"]), 224, SuiteConfig().rotate_prob)
        shown = document.token_characters(page, chars, 28)  # (64, 4): what each token holds, from the glyphs
        pads = (ex.input_ids == template.ids.image_pad).nonzero().flatten().tolist()
        numbers = [m.content.split(" ")[0] for m in r.messages if m.role == "assistant"]
        assert len(ex.copy_pairs) == sum(map(len, numbers)) and len(numbers) == 4
        written = "".join(tok.decode(ex.labels[q + 1 : q + 2]) for q, _ in ex.copy_pairs.tolist())
        assert written == "".join(numbers)
        for (q, k), ch in zip(ex.copy_pairs.tolist(), written):
            assert chars.index(ch) + 1 in shown[pads.index(k)], f"page {i}: {ch!r} is not on its token"


def test_reading_lines_label_each_token_with_its_characters_in_reading_order(template, files):
    from citrus_v.data.reading import CHARSET, SLOTS

    # a.png is 100 x 150 -> 112 x 140 for the ViT: 4 rows x 5 columns of 28-px merged tokens
    lines = [{"text": "AB C", "points": [[1, 1], [2, 2], [3, 3], [60, 30]]},  # the space is not read
             {"text": "123456", "points": [[149, 99]] * 5 + [[60, 30]]}]
    r = Record([Message("user", "<image>Read it."), Message("assistant", "ok")], images=["a.png"], meta={"reading": lines})
    got = template.encode_record(r, files).reading
    cls = {c: CHARSET.index(c) + 1 for c in "ABC123456"}
    assert got.shape == (20, SLOTS) and got.dtype == torch.long
    assert got[0].tolist() == [cls["A"], cls["B"], 0, 0]
    # (60, 30) -> (56, 33.6) resized: column 2, row 1 -> token 7: "C", then the second line's "6"
    assert got[7].tolist() == [cls["C"], cls["6"], 0, 0]
    assert got[19].tolist() == [cls["1"], cls["2"], cls["3"], cls["4"]]  # "5" is past the token's 4 slots
    assert int((got > 0).sum()) == 8
    assert template.encode_record(rec([("user", "<image>Hi"), ("assistant", "12")], images=["a.png"]), files).reading.shape == (0, SLOTS)


@pytest.mark.parametrize("lines, message", [
    ({"text": "A"}, r"meta\.reading: must be a list of \{text, points\} lines"),
    ([{"text": "AB", "points": [[1, 1]]}], r"meta\.reading\[0\]: must be \{\"text\": str, \"points\": one \[x, y\] per character\}"),
    ([{"text": "A", "points": [[1, 1]]}, {"text": "B", "points": [[150, 1]]}],
     r"meta\.reading\[1\]\.points\[0\]: must be \[x, y\] inside the 150x100 image"),
])
def test_reading_lines_that_do_not_fit_the_record_name_the_field(template, files, lines, message):
    r = Record([Message("user", "<image>Q?"), Message("assistant", "12")], images=["a.png"], meta={"reading": lines})
    with pytest.raises(ValueError, match=message):
        template.encode_record(r, files)
    with pytest.raises(ValueError, match="meta.reading: the record has no image to read"):
        template.encode_record(Record([Message("user", "Q?"), Message("assistant", "12")], meta={"reading": []}), files)


def test_suite_pages_reading_labels_are_what_the_glyphs_show(template, tmp_path):
    from citrus_v.data.phantoms import document
    from citrus_v.data.phantoms.suite import SuiteConfig, document_pages
    from citrus_v.data.reading import CHARSET

    path = document_pages(tmp_path, 3, seed=3, progress=False)
    data = JsonlDataset(path, template)
    for i, r in enumerate(data.records):
        page = document.render(np.random.default_rng(r.meta["sample_seed"]), 224, SuiteConfig().rotate_prob)
        shown = document.token_characters(page, CHARSET, 28)  # (64, 4), from the page's own text layout
        assert data[i].reading.tolist() == shown.tolist() and int((data[i].reading > 0).sum()) > 40

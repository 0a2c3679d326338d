"""The synthetic suite: determinism, split hygiene, record/mask/box bookkeeping, balance, CLI."""

from __future__ import annotations

import argparse
import collections
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from citrus_v.data.phantoms import generate_suite, iter_texts, make_sample
from citrus_v.data.phantoms.cli import add_phantoms_command
from citrus_v.data.boxes import bbox_of
from citrus_v.data.phantoms.suite import SPECS, SPLITS, SuiteConfig
from citrus_v.data.phantoms.totalseg import slice_blocks
from citrus_v.data.schema import TASKS, read_jsonl, resolve

SIZE = 112


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("suite")  # the real volumes come from the package (citrus_v/assets/totalseg_example)
    generate_suite(out, 240, 60, 60, seed=7, size=SIZE, progress=False)
    return out


@pytest.fixture(scope="module")
def records(suite: Path) -> dict:
    return {s: read_jsonl(suite / f"{s}.jsonl") for s in SPLITS}


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, seed in ((a, 3), (b, 3), (c, 4)):
        generate_suite(d, 30, 6, 6, seed=seed, size=64, progress=False)
    assert _digest(a) == _digest(b)
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()
    assert (a / "images/train/0000000.png").read_bytes() != (c / "images/train/0000000.png").read_bytes()


def test_workers_do_not_change_output(tmp_path):
    generate_suite(tmp_path / "one", 70, 2, 2, seed=1, size=48, progress=False)
    generate_suite(tmp_path / "two", 70, 2, 2, seed=1, size=48, progress=False, workers=2)
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")


def test_counts_and_every_modality_and_task_present(records):
    assert [len(records[s]) for s in SPLITS] == [240, 60, 60]
    train = records["train"]
    assert {r.modality for r in train} == {"ct", "mr", "xray", "us", "endoscopy", "derm", "document"}
    assert {r.task for r in train} == set(TASKS) - {"text"}
    assert any(r.meta.get("source") == "totalseg" for r in train)


def test_splits_share_no_phantom_or_image(records, suite):
    ids = {s: {r.meta["phantom_id"] for r in records[s] if "source" not in r.meta} for s in SPLITS}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["val"] and not ids["val"] & ids["test"]
    hashes = {s: {hashlib.sha1((suite / r.images[0]).read_bytes()).hexdigest() for r in records[s]} for s in SPLITS}
    assert not hashes["train"] & hashes["test"]


def test_totalseg_slices_are_separated_by_a_gap(records):
    for vol in ("ct", "mr"):
        z = {s: {r.meta["slice"] for r in records[s] if r.meta.get("volume") == vol} for s in SPLITS}
        assert z["train"] and z["test"]
        for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
            assert min(abs(i - j) for i in z[a] for j in z[b] or [10**6]) >= 3  # at least 2 slices between
    blocks = slice_blocks(30)
    assert sorted(blocks["train"] + blocks["val"] + blocks["test"]) == sorted(set(range(30)) - {8, 9, 15, 16, 19, 20})


def test_masks_are_the_generated_structures_and_boxes_their_bounds(records, suite):
    cfg = SuiteConfig(seed=7, size=SIZE)
    n_checked = 0
    for split in SPLITS:
        for i, rec in enumerate(records[split]):
            assert rec.images and rec.messages[0].content.startswith("<image>")
            img = np.asarray(Image.open(resolve(rec.images[0], suite)))
            assert img.shape[:2] == (SIZE, SIZE)
            if not rec.masks and rec.objects is None:
                continue
            s = make_sample(cfg, split, i)  # regenerate in memory: same seed -> same arrays
            assert rec.num_seg_tokens == len(rec.masks) == len(s.masks)
            for rel, want in zip(rec.masks, s.masks):
                got = np.asarray(Image.open(resolve(rel, suite)))
                assert set(np.unique(got)) <= {0, 255} and got.any()
                np.testing.assert_array_equal(got == 255, want)
                gray = img if img.ndim == 2 else img.mean(axis=2)
                inside, outside = gray[want].mean(), gray[~want].mean()
                assert abs(inside - outside) > 8, f"{rec.modality} mask is not contrasted: {inside} vs {outside}"
                n_checked += 1
            if rec.objects is not None:
                assert rec.objects.bbox == s.objects.bbox
                for b in rec.objects.bbox:
                    assert 0 <= b[0] < b[2] <= SIZE and 0 <= b[1] < b[3] <= SIZE
    assert n_checked > 40


def test_bbox_of_is_exclusive_end():
    m = np.zeros((10, 10), bool)
    m[2:5, 3:9] = True
    assert bbox_of(m) == [3, 2, 9, 5]
    with pytest.raises(ValueError, match="empty"):
        bbox_of(np.zeros((4, 4), bool))


def test_closed_answers_are_balanced(records):
    answers = collections.Counter(r.messages[1].content for s in SPLITS for r in records[s] if r.task == "vqa_closed")
    for a, b in (("yes", "no"), ("small", "large")):
        assert 0.4 <= answers[a] / (answers[a] + answers[b]) <= 0.6, answers
    first = [r.meta["side"] == SPECS[r.meta["generator"]].locations[0]
             for s in SPLITS for r in records[s] if r.meta.get("template") == "location"]
    assert len(first) >= 10 and 0.3 <= sum(first) / len(first) <= 0.7


def test_task_answer_formats(records):
    for rec in records["train"]:
        a = rec.messages[1].content
        if rec.task == "segmentation":
            assert a.count("[SEG]") >= 1
        elif rec.task == "detection":
            assert a == "<boxes>" and rec.objects is not None and len(rec.objects.ref) == len(rec.objects.bbox) >= 1
        elif rec.task == "report":
            assert a.startswith("Findings:") and " Impression: " in a
            assert ("<boxes>" in a) == (rec.objects is not None)
        elif rec.task == "cot":
            assert a.startswith("<think>") and "</think><answer>" in a and a.endswith("</answer>")
        elif rec.task == "document":
            q = rec.messages[0].content
            assert q.startswith("<image>What is the ") and len(a.split()) == 2 and a.split()[0][0].isdigit()


def test_document_answer_differs_with_page(records):
    docs = [r.messages[1].content for r in records["train"] if r.task == "document"]
    assert len(docs) >= 10 and len(set(docs)) > 0.8 * len(docs)


def test_iter_texts_covers_questions_and_answers():
    texts = list(iter_texts(n=30, seed=0, size=48))
    assert "Sure, it is [SEG]." in texts and "yes" in texts and "no" in texts
    assert any(t.startswith("Findings:") for t in texts) and any(t.startswith("What is the ") for t in texts)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="size"):
        SuiteConfig(size=8)
    with pytest.raises(ValueError, match="sources: unknown"):
        SuiteConfig(sources=("pet",))
    with pytest.raises(ValueError, match="n_val"):
        generate_suite("/tmp/never", 1, -1, 0, progress=False)


def test_cli_writes_three_files(tmp_path, totalseg_dir):
    parser = argparse.ArgumentParser()
    add_phantoms_command(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["phantoms", "--out", str(tmp_path), "--n", "12", "--seed", "2", "--size", "64",
                              "--totalseg-dir", str(totalseg_dir)])
    assert args.func(args) == 0
    lens = [len(read_jsonl(tmp_path / f"{s}.jsonl")) for s in SPLITS]
    assert lens == [12, 2, 2]
    rec = read_jsonl(tmp_path / "train.jsonl")[0]
    assert Image.open(resolve(rec.images[0], tmp_path)).size == (64, 64)


@pytest.mark.parametrize("rotation_seed", range(4))
def test_document_glyph_labels_sit_on_the_ink_of_their_characters(rotation_seed):
    from citrus_v.data.phantoms import document

    rng = np.random.default_rng(rotation_seed)
    page = document.render(rng, 224, rotate_prob=1.0 if rotation_seed else 0.0)  # seed 0: upright; others turned
    digits = document.glyph_labels(page, "0123456789")
    ink = page.image[..., 0] < 128  # (S, S): dark text on light paper
    assert digits.shape == ink.shape and digits.max() <= 10
    # every labelled pixel is ink (kerning may shift a glyph by a pixel, hence not exactly 1)
    assert ink[digits > 0].mean() > 0.85
    # the labels hold exactly the digits printed (values and patient id), and no letter shapes
    printed = "".join(text for _, text, _ in page.lines)
    assert {int(k) - 1 for k in np.unique(digits[digits > 0])} == {int(c) for c in printed if c.isdigit()}
    letters = document.glyph_labels(page, "LAB")
    assert letters.max() == 3 and not np.any((letters > 0) & (digits > 0))


def test_source_of_names_the_generator_make_sample_uses():
    from citrus_v.data.phantoms.suite import source_of

    cfg = SuiteConfig(seed=3, size=64)
    for split in ("train", "test"):
        for index in range(0, 60, 7):
            assert source_of(cfg, split, index) == make_sample(cfg, split, index).meta["generator"]


@pytest.mark.parametrize("rotation_seed", range(4))
def test_document_token_characters_are_the_ink_in_each_token_in_reading_order(rotation_seed):
    from citrus_v.data.phantoms import document

    page = document.render(np.random.default_rng(rotation_seed), 224, rotate_prob=1.0 if rotation_seed else 0.0)
    charset = "0123456789.ABLTRPOE"
    slots = document.token_characters(page, charset, 28, slots=4)  # (64, 4)
    labels = document.glyph_labels(page, charset)
    assert slots.shape == (64, 4)
    for k, row in enumerate(slots):
        r, c = divmod(k, 8)
        # the character's box is the line's height, so a '.' low on the line may ink the next token: half a token's slack
        near = labels[max(r * 28 - 14, 0):(r + 1) * 28 + 14, max(c * 28 - 14, 0):(c + 1) * 28 + 14]
        for v in row[row > 0]:
            assert (near == v).any(), f"token {k}: {charset[v - 1]!r} has no ink near it"
        filled = int((row > 0).sum())
        assert (row[:filled] > 0).all() and (row[filled:] == 0).all(), f"token {k}: empty slots before filled ones"
    # each token's characters read in the text's order, whatever the page's turn: as a string, a piece of a line
    lines = ["".join(ch for ch in text if ch in charset) for _, text, _ in page.lines]
    pieces = ["".join(charset[v - 1] for v in row if v) for row in slots]
    assert sum(len(p) >= 2 for p in pieces) >= 5
    for piece in pieces:
        assert any(piece in line for line in lines), f"{piece!r} is not in the text's order (rotation {page.rotation})"


def test_document_patch_characters_flags_the_patch_that_holds_enough_ink():
    from citrus_v.data.phantoms import document

    labels = np.zeros((56, 56), np.int16)  # 4 x 4 patches of 14 px, merged 2 x 2 -> 4 tokens
    labels[2:4, 44:46] = 2  # 4 pixels of character 1 in patch (row 0, col 3): token 1, its patch (0, 1)
    labels[30, 5:7] = 3  # 2 pixels of character 2 in patch (row 2, col 0): under min_pixels
    got = document.patch_characters(labels, n_chars=3, patch=14, merge=2)
    assert got.shape == (4, 4, 3)
    assert got.sum() == 1 and got[1, 1, 1] == 1
    assert document.patch_characters(labels, n_chars=3, patch=14, merge=2, min_pixels=2)[2, 0, 2] == 1


def test_document_samples_carry_the_copy_points_of_their_answer():
    from citrus_v.data.phantoms import document
    from citrus_v.data.phantoms.suite import source_of

    cfg = SuiteConfig(seed=3)
    index = next(i for i in range(200) if source_of(cfg, "test", i) == "document")
    s = make_sample(cfg, "test", index)
    page = document.render(np.random.default_rng(s.meta["sample_seed"]), cfg.size, cfg.rotate_prob)
    (points,) = s.meta["copy_points"]
    assert len(points) == len(s.answer.split(" ")[0]) and points == document.copy_points(page, s.answer)
    # each point is the centre of its character: on the page's ink (2 px of slack for a '.')
    labels = document.glyph_labels(page, "0123456789.")
    for (x, y), ch in zip(points, s.answer):
        near = labels[max(int(y) - 9, 0):int(y) + 10, max(int(x) - 2, 0):int(x) + 3]
        assert ("0123456789.".index(ch) + 1) in near, f"{ch!r} has no ink at {(x, y)}"
    with pytest.raises(ValueError, match="not a value line"):
        document.copy_points(page, "LAB REPORT")
    # and the whole page's text for the token-reading target, each character at its centre
    assert [line["text"] for line in s.meta["reading"]] == [text for _, text, _ in page.lines]
    centres = document.character_centres(page)
    for line, cs in zip(s.meta["reading"], centres):
        assert line["points"] == [[round(x, 1), round(y, 1)] for x, y in cs]


def test_document_pages_ask_every_value_of_train_pages_past_the_suite(tmp_path):
    from citrus_v.data.phantoms.suite import document_pages

    a = read_jsonl(document_pages(tmp_path / "a", 3, seed=4, start=5000, progress=False))
    b = read_jsonl(document_pages(tmp_path / "b", 3, seed=4, start=5000, progress=False))
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    for r in a:
        assert r.meta["split"] == "train" and int(r.meta["phantom_id"].split("-")[1]) >= 5000
        answers = [m.content for m in r.messages if m.role == "assistant"]
        assert len(answers) == 4 and len(r.meta["copy_points"]) == 4 and r.messages[0].content.startswith("<image>")
        assert [len(p) for p in r.meta["copy_points"]] == [len(x.split(" ")[0]) for x in answers]
        assert "".join(line["text"] for line in r.meta["reading"]).count(answers[0].split(" ")[0]) >= 1
        assert (tmp_path / "a" / r.images[0]).is_file()

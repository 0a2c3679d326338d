"""scripts/train_real_seg.py: subsets (per-source picks, the synthetic replay's size, test never read)
and cached's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.scripts.conftest import load_script


@pytest.fixture(scope="module")
def script():
    yield from load_script("train_real_seg")


def _folder(root: Path, n: dict[str, int], source: str | None) -> Path:
    """A split folder: n[split] segmentation records (image + mask) and one VQA record per split."""
    (root / "images").mkdir(parents=True)
    for split, count in n.items():
        rows = []
        for k in range(count):
            Image.new("RGB", (16, 16)).save(root / "images" / f"{split}{k}.png")
            Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "images" / f"{split}{k}_m.png")
            rows.append({"messages": [{"role": "user", "content": "<image>Please segment it."},
                                      {"role": "assistant", "content": "Sure, it is [SEG]."}],
                         "images": [f"images/{split}{k}.png"], "masks": [f"images/{split}{k}_m.png"],
                         "task": "segmentation", "meta": {"source": source} if source else {}})
        rows.append({"messages": [{"role": "user", "content": "Yes?"}, {"role": "assistant", "content": "No"}],
                     "images": [], "task": "vqa_closed"})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "test.jsonl").write_text("not json: never read\n")
    return root


def test_subsets_take_the_replay_size_asked_and_never_read_test(script, tmp_path: Path):
    real = tmp_path / "real"
    for source in script.REAL_SEG:
        _folder(real / source, {"train": 3, "val": 2}, source)
    synthetic = _folder(tmp_path / "suite", {"train": 6, "val": 2}, None)
    some = script.subsets(real, synthetic, tmp_path / "some", synthetic_train=4)
    every = script.subsets(real, synthetic, tmp_path / "all", synthetic_train=None)
    assert some["train"]["synthetic"] == 4 and every["train"]["synthetic"] == 6
    for counts in (some, every):
        assert all(counts["train"][s] == 3 and counts["val"][s] == 2 for s in script.REAL_SEG)
        assert counts["val"]["synthetic"] == 2
    rows = [json.loads(line) for line in (tmp_path / "all" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * len(script.REAL_SEG) + 6 and all(r["masks"] for r in rows)
    assert all((tmp_path / "all" / p).is_file() for r in rows for p in r["images"] + r["masks"])


def test_a_train_count_for_a_new_source_adds_train_records_and_leaves_val_as_it_was(script, tmp_path: Path):
    real = tmp_path / "real"
    for source in script.REAL_SEG:
        _folder(real / source, {"train": 3, "val": 2}, source)
    _folder(real / "totalseg", {"train": 5, "val": 2}, "totalseg")
    synthetic = _folder(tmp_path / "suite", {"train": 6, "val": 2}, None)
    plain = script.subsets(real, synthetic, tmp_path / "plain")
    more = script.subsets(real, synthetic, tmp_path / "more", train_counts={"totalseg": None, "drive": 1})
    assert "totalseg" not in plain["train"] and more["train"]["totalseg"] == 5 and more["train"]["drive"] == 1
    assert more["val"] == plain["val"] and "totalseg" not in more["val"]
    assert (tmp_path / "more" / "val.jsonl").read_text() == (tmp_path / "plain" / "val.jsonl").read_text()


def test_cached_names_the_missing_cache_in_one_line_before_loading_a_model(script, tmp_path: Path):
    data = tmp_path / "val.jsonl"
    data.write_text(json.dumps({"messages": [], "images": ["a.png"], "masks": ["m.png"]}) + "\n")
    run = tmp_path / "run"
    (run / "states" / "val").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"run/image_cache/val: no cached val set here; check --image-cache"):
        script.cached_table(data, run, tmp_path / "no_model")
    (run / "image_cache" / "val").mkdir(parents=True)
    (run / "states" / "val").rmdir()
    with pytest.raises(SystemExit, match=r"run/states/val: no cached val set here; check the run folder"):
        script.cached_table(data, run, tmp_path / "no_model")

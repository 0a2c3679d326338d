"""scripts/eval_whole_images.py without a model: which images each split scores, how a setting reaches the
predictor (whole or tiled), the Dice of each image (no [SEG]: 0) and the table it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.data.real_fixtures import drive_set, monuseg_set
from tests.scripts.conftest import load_script

from citrus_v.infer.predictor import Predictor
from citrus_v.infer.types import Mask, Prediction


@pytest.fixture(scope="module")
def script():
    yield from load_script("eval_whole_images")


class FakePredictor:
    """Whole: answers without [SEG]. Tiled: one mask covering the image. Records what it was asked."""

    def __init__(self):
        self.calls = []

    def predict(self, rgb, question):
        self.calls.append(("whole", rgb.shape[:2], question))
        return Prediction(answer="large", raw_text="large")

    def predict_tiled(self, rgb, question, tiles):
        self.calls.append((tiles, rgb.shape[:2], question))
        return Prediction(answer="Sure, it is [SEG].", raw_text="", masks=[Mask(np.ones(rgb.shape[:2], bool), 0.5)])


def test_scores_each_split_whole_and_tiled(script, tmp_path, monkeypatch, capsys):
    drive_fg = drive_set(tmp_path / "DRIVE")
    monuseg_fg = monuseg_set(tmp_path / "MoNuSeg")
    fake = FakePredictor()
    monkeypatch.setattr(Predictor, "from_pretrained", classmethod(lambda cls, *a, **kw: fake))
    out = tmp_path / "whole.json"
    assert script.main(["--drive", str(tmp_path / "DRIVE"), "--monuseg", str(tmp_path / "MoNuSeg"), "--split", "val",
                        "--tiles", "whole", "auto", "2x3", "--out", str(out)]) == 0
    # val: DRIVE training image 38 only (37-40 are val), MoNuSeg's Val_Folder image
    assert [c[0] for c in fake.calls] == ["whole", "auto", (2, 3)] * 2
    assert fake.calls[0] == ("whole", (30, 28), "Please segment the retinal vessels.")
    assert fake.calls[3][2] == "Please segment the cell nuclei."
    report = json.loads(out.read_text())
    rows = {(r["source"], r["tiles"]): r for r in report["rows"]}
    fg = drive_fg["training", 38]
    everything = 2 * fg.sum() / (fg.sum() + fg.size)  # Dice of an all-ones mask
    assert rows["drive", "whole"]["dice_mean"] == 0.0 and rows["drive", "whole"]["n"] == 1
    assert rows["drive", "auto"]["dice_mean"] == pytest.approx(everything, abs=1e-4)
    fg = monuseg_fg["Val_Folder"]
    assert rows["monuseg", "2x3"]["dice_mean"] == pytest.approx(2 * fg.sum() / (fg.sum() + fg.size), abs=1e-4)
    assert [i["image"] for i in report["images"][:3]] == ["drive_training_38"] * 3
    assert "drive    val   tiles 2x3" in capsys.readouterr().out


def test_test_split_and_missing_images(script, tmp_path, monkeypatch):
    drive_set(tmp_path / "DRIVE")
    fake = FakePredictor()
    monkeypatch.setattr(Predictor, "from_pretrained", classmethod(lambda cls, *a, **kw: fake))
    assert script.main(["--drive", str(tmp_path / "DRIVE"), "--split", "test", "--tiles", "whole"]) == 0
    assert fake.calls == [("whole", (30, 28), "Please segment the retinal vessels.")]  # test/ image 01 only
    (tmp_path / "empty" / "training" / "images").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no val images under --drive"):
        script.main(["--drive", str(tmp_path / "empty"), "--split", "val"])


def test_scale_resizes_image_and_mask_together(script, tmp_path, monkeypatch):
    fg = drive_set(tmp_path / "DRIVE")["test", 1]  # (30, 28)
    fake = FakePredictor()
    monkeypatch.setattr(Predictor, "from_pretrained", classmethod(lambda cls, *a, **kw: fake))
    out = tmp_path / "x2.json"
    assert script.main(["--drive", str(tmp_path / "DRIVE"), "--split", "test", "--scale", "2", "--tiles", "auto",
                        "--out", str(out)]) == 0
    assert fake.calls == [("auto", (60, 56), "Please segment the retinal vessels.")]
    row = json.loads(out.read_text())["rows"][0]
    # nearest-neighbour doubling keeps the foreground's share: the all-ones mask scores as at scale 1
    assert row["scale"] == 2.0 and row["dice_mean"] == pytest.approx(2 * fg.sum() / (fg.sum() + fg.size), abs=1e-4)


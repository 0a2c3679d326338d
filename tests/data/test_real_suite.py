"""`citrus-v data real-suite` on a folder of tiny synthetic sources: per-source and merged splits, the
counts it prints, the note for a missing source, and the VQA-RAD and CVC-ClinicDB split rules."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from citrus_v.cli import main
from citrus_v.data.schema import read_jsonl
from citrus_v.data.sources.real_suite import NAMES, vqa_rad_split
from tests.data.real_fixtures import bccd_set, covid_set, monuseg_set
from tests.data.test_cvc_clinicdb import fake_set

VQA_IMAGES = [f"synpic{i}.jpg" for i in range(40)]
VOLUME_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "real_sources"


def vqa_rad_set(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    for name in VQA_IMAGES:
        Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(root / "images" / name)
    rows = [{"qid": i, "image_name": n, "question": "Is there a mass?", "answer": "no", "answer_type": "CLOSED"}
            for i, n in enumerate(VQA_IMAGES)]
    (root / "trainset.json").write_text(json.dumps(rows))
    (root / "testset.json").write_text(json.dumps(rows[:3]))
    return root


def sources(root: Path) -> Path:
    """Every source but DRIVE, in the folder names the command looks for."""
    vqa_rad_set(root / "vqa-rad")
    covid_set(root / "covid-chestxray")
    fake_set(root / "cvc-clinicdb", {400: (2, 9, 2, 9), 410: (3, 9, 3, 9), 500: (1, 5, 1, 5)})
    monuseg_set(root / "monuseg")
    bccd_set(root / "bccd")
    for name in ("totalseg", "dcmqi"):
        shutil.copytree(VOLUME_FIXTURES / name, root / name)
    return root


def test_suite_writes_splits_per_source_and_merged(tmp_path: Path, capsys):
    src, out = sources(tmp_path / "src"), tmp_path / "suite"
    assert main(["data", "real-suite", "--sources", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped drive: no folder" in printed and "github:hamdan92/retinal-vessel-segmentation" in printed
    counts = json.loads((out / "counts.json").read_text())
    assert list(counts["sources"]) == [n for n in NAMES if n != "drive"] and list(counts["missing"]) == ["drive"]
    for split in ("train", "val", "test"):
        merged = read_jsonl(out / f"{split}.jsonl")
        per_source = {n: len(read_jsonl(out / n / f"{split}.jsonl")) for n in counts["sources"]}
        assert Counter(r.meta["source"] for r in merged) == Counter({n: c for n, c in per_source.items() if c})
        assert per_source == {n: s["records"][split] for n, s in counts["sources"].items()}
        assert {r.meta["split"] for r in merged} <= {split}
        assert main(["data", "validate", str(out / f"{split}.jsonl")]) == 0  # merged paths resolve from OUT
    cvc = {s: [r.meta["frame"] for r in read_jsonl(out / "cvc-clinicdb" / f"{s}.jsonl")] for s in ("train", "val", "test")}
    assert cvc == {"train": [400, 400], "val": [410, 410], "test": [500, 500]}  # segment + locate
    line = next(ln for ln in printed.splitlines() if ln.startswith("monuseg"))
    assert line.split()[1:] == ["3", "3", "3"]


def test_vqa_rad_val_is_a_slice_of_train_by_image_and_test_is_its_own(tmp_path: Path):
    src, out = sources(tmp_path / "src"), tmp_path / "suite"
    assert main(["data", "real-suite", "--sources", str(src), "--out", str(out), "--only", "vqa-rad"]) == 0
    split = {s: read_jsonl(out / "vqa-rad" / f"{s}.jsonl") for s in ("train", "val", "test")}
    assert len(split["test"]) == 3 and len(split["train"]) + len(split["val"]) == len(VQA_IMAGES)
    assert split["val"] and split["train"]  # 40 images: both sides hold some
    for s in ("train", "val"):
        assert {vqa_rad_split(VQA_IMAGES[r.meta["qid"]]) for r in split[s]} == {s}


def test_only_rebuilds_its_sources_and_keeps_the_others(tmp_path: Path, capsys):
    src, out = sources(tmp_path / "src"), tmp_path / "suite"
    assert main(["data", "real-suite", "--sources", str(src), "--out", str(out)]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.parent != out}
    merged = {s: read_jsonl(out / f"{s}.jsonl") for s in ("train", "val", "test")}
    (src / "totalseg" / "example_mr_sm.nii.gz").unlink(missing_ok=True)  # the rebuilt source changes
    first = json.loads((out / "counts.json").read_text())
    first["sources"].pop("covid-chestxray")  # as if another run's counts.json had dropped it: the folder decides
    (out / "counts.json").write_text(json.dumps(first))
    assert main(["data", "real-suite", "--sources", str(src), "--out", str(out), "--only", "totalseg,dcmqi"]) == 0
    printed = capsys.readouterr().out
    assert "kept bccd:" in printed and "kept drive" not in printed  # drive was never converted
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.parent != out}
    others = {p for p in before if p.parts[0] not in ("totalseg", "dcmqi")}
    assert others and all(after[p] == before[p] for p in others)  # untouched
    counts = json.loads((out / "counts.json").read_text())
    assert counts["kept"] == ["vqa-rad", "covid-chestxray", "cvc-clinicdb", "monuseg", "bccd"]
    assert counts["sources"]["covid-chestxray"]["left_out"] == {} and counts["sources"]["bccd"]["left_out"]
    for split in ("train", "val", "test"):
        now = read_jsonl(out / f"{split}.jsonl")
        assert [r.to_dict() for r in now if r.meta["source"] not in ("totalseg", "dcmqi")] == \
            [r.to_dict() for r in merged[split] if r.meta["source"] not in ("totalseg", "dcmqi")]
        assert not any(r.meta.get("volume") == "mr" for r in now)  # totalseg was rebuilt without its MR
        assert len(now) == sum(c["records"][split] for c in counts["sources"].values())


def test_refusals_are_one_line(tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    cases = [
        (["--sources", str(tmp_path / "nope")], "no such folder"),
        (["--sources", str(tmp_path / "empty"), "--only", "vqa-rad,kvasir"], "--only: unknown source(s) kvasir"),
        (["--sources", str(tmp_path / "empty")], "none of the sources"),
    ]
    for args, problem in cases:
        assert main(["data", "real-suite", *args, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert problem in err and len(err.splitlines()) == 1

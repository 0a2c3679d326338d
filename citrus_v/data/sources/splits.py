"""Train/val/test split rules of the real sources, fixed here before any training (issue 21).

Every real-source loader writes ``meta["split"]``; the rules below are the only place a split is
chosen. Where a set ships its own test split it is used as is; otherwise the split is a hash of the
group that must not straddle splits (a patient, an image), so it does not depend on which other files
a snapshot happens to hold, and a file that appears later never moves an old one.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")

# source -> the rule in words (printed by `citrus-v data real-suite`, quoted by docs/default_model.md)
RULES = {
    "vqa-rad": "test = testset.json (the set's own); val = the train questions of 10% of the train images "
    "(hash of the image name), train = the rest",
    "covid-chestxray": "by patient id (hash): 70% train, 10% val, 20% test; every image of a patient on one side "
    "(ids that list the same image count as one patient)",
    "cvc-clinicdb": "contiguous frame blocks = whole video sequences: train 1-408, val 409-478, test 479-612",
    "monuseg": "the folders: Train_Folder / Val_Folder / Test_Folder (test = MoNuSeg 2018's official test images)",
    "drive": "test/ = DRIVE's official test set; val = training images 37-40; train = training images 21-36",
    "bccd": "BCCD/ImageSets/Main train.txt / val.txt / test.txt (the set's own)",
    "totalseg": "per volume, contiguous axial slice blocks with 2 unused slices between blocks "
    "[train | gap | test | gap | val | gap | train] (slice_blocks; the same blocks the synthetic suite draws "
    "its real slices from, so its train split never holds a test or val slice): CT 30 slices: train 0-7, 21-29, "
    "test 10-14, val 17-18; MR 20 slices and the DICOM CT 20 slices: train 0-4, 15-19, test 7-9, val 12",
    "dcmqi": "per series, the same slice blocks when the series has 10 slices or more; a shorter series goes "
    "whole to one split by the hash of its SeriesInstanceUID (70% train, 10% val, 20% test): dcmqi's 3-slice CT "
    "(1 mm apart) cannot hold three blocks with gaps",
}

SLICE_GAP = 2  # unused slices between blocks: neighbouring 1-3 mm slices look alike


def slice_blocks(n_z: int, gap: int = SLICE_GAP) -> dict[str, list[int]]:
    """Axial slice indices per split for a volume of ``n_z`` slices: contiguous blocks
    [train_a | gap | test | gap | val | gap | train_b], test about 20% and val about 10% of the used
    slices. The synthetic suite (``phantoms.totalseg``) and the ``totalseg`` source both split by this."""
    usable = n_z - 3 * gap
    n_test, n_val = max(1, round(usable * 0.2)), max(1, round(usable * 0.1))
    n_train = usable - n_test - n_val
    if n_train < 2:
        raise ValueError(f"a volume of {n_z} slices is too short for three blocks with gap {gap}")
    a = n_train // 2
    test0 = a + gap
    val0 = test0 + n_test + gap
    b0 = val0 + n_val + gap
    return {
        "train": list(range(0, a)) + list(range(b0, n_z)),
        "test": list(range(test0, test0 + n_test)),
        "val": list(range(val0, val0 + n_val)),
    }


def slice_split(n_z: int, z: int) -> str | None:
    """The split of slice ``z`` of a volume of ``n_z`` slices; None for a gap slice (never used)."""
    return next((split for split, zs in slice_blocks(n_z).items() if z in zs), None)


def hash_fraction(key: str) -> float:
    """A stable number in [0, 1) for ``key`` (sha1; the same on every machine and Python)."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:12], 16) / 16**12


def hash_split(key: str, *, val: float, test: float) -> str:
    """'test' for the first ``test`` fraction of the hash range, then 'val', then 'train'."""
    if not (0 <= val and 0 <= test and val + test < 1):
        raise ValueError(f"val {val} and test {test} must be >= 0 and sum below 1")
    u = hash_fraction(key)
    return "test" if u < test else "val" if u < test + val else "train"

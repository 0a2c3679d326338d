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
}


def hash_fraction(key: str) -> float:
    """A stable number in [0, 1) for ``key`` (sha1; the same on every machine and Python)."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:12], 16) / 16**12


def hash_split(key: str, *, val: float, test: float) -> str:
    """'test' for the first ``test`` fraction of the hash range, then 'val', then 'train'."""
    if not (0 <= val and 0 <= test and val + test < 1):
        raise ValueError(f"val {val} and test {test} must be >= 0 and sum below 1")
    u = hash_fraction(key)
    return "test" if u < test else "val" if u < test + val else "train"

"""`citrus-v data real-suite`: every real source of issue 21 found under one folder -> train/val/test JSONL.

``SOURCES_DIR`` holds one subfolder per source, named as in ``SOURCES`` (docs/default_model.md, "Real
data (issue 21)", says what to fetch and where it goes). For each source found the command writes
``OUT/<source>/{train,val,test}.jsonl`` (+ ``images/``) and, merged over the sources,
``OUT/{train,val,test}.jsonl`` (paths relative to ``OUT``), and ``OUT/counts.json``. A missing source is
skipped with a one-line note; the splits are those of ``splits.RULES``, fixed before any training.
With ``only`` a subset, the other sources' folders already in ``OUT`` are left as they are and merged
again with their earlier counts, so converting one new source does not drop the others.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from citrus_v.data.schema import Record, read_jsonl, write_jsonl
from citrus_v.data.sources import place_files
from citrus_v.data.sources.bccd import load_bccd
from citrus_v.data.sources.common import SourceError
from citrus_v.data.sources.covid_cxr import load_covid_chestxray
from citrus_v.data.sources.cvc_clinicdb import load_cvc_clinicdb
from citrus_v.data.sources.dcmqi import load_dcmqi
from citrus_v.data.sources.drive import load_drive
from citrus_v.data.sources.monuseg import load_monuseg
from citrus_v.data.sources.splits import RULES, SPLITS, hash_split
from citrus_v.data.sources.totalseg import load_totalseg
from citrus_v.data.sources.vqa import load_vqa_rad

Builder = Callable[[Path, Path, Counter], list[Record]]  # (source folder, image_dir, skipped) -> records with meta.split


def vqa_rad_split(image_name: str) -> str:
    """val for the questions on 10% of the train images (hash of the name), else train."""
    return hash_split(f"vqa-rad:{image_name}", val=0.1, test=0.0)


def _vqa_rad(src: Path, image_dir: Path, skipped: Counter) -> list[Record]:
    for name in ("trainset.json", "testset.json"):
        if not (src / name).is_file():
            raise SourceError(src / name, "missing: the data_RAD/ folder holds trainset.json, testset.json and images/")
    train = load_vqa_rad(src / "trainset.json", images_root=src / "images")
    test = load_vqa_rad(src / "testset.json", images_root=src / "images")
    for rec in train:
        rec.meta["split"] = vqa_rad_split(Path(rec.images[0]).name)
    for rec in test:
        rec.meta["split"] = "test"
    return train + test


@dataclass(frozen=True)
class SuiteSource:
    name: str  # also the subfolder of SOURCES_DIR
    fetch: str  # what to fetch and what goes into the subfolder
    build: Builder


SOURCES = (
    SuiteSource("vqa-rad", "fetch github:longle0702/med-v2qa; put the contents of data_RAD/ here "
                "(trainset.json, testset.json, images/)", _vqa_rad),
    SuiteSource("covid-chestxray", "fetch github:s-mostafa-a/covid-chestxray-dataset; put the repository's root here "
                "(metadata.csv, images/, annotations/)", lambda s, d, k: load_covid_chestxray(s, image_dir=d, skipped=k)),
    SuiteSource("cvc-clinicdb", "fetch github:ViniciusSimm/Colo-Retal-Induscon2023; put the contents of "
                "datasets/CVC-ClinicDB/ here (images/, masks/)", lambda s, d, k: load_cvc_clinicdb(s, image_dir=d)),
    SuiteSource("monuseg", "fetch github:McGregorWwww/UCTransNet; put the contents of datasets/MoNuSeg/ here "
                "(Train_Folder/, Val_Folder/, Test_Folder/)", lambda s, d, k: load_monuseg(s, image_dir=d, skipped=k)),
    SuiteSource("drive", "fetch github:hamdan92/retinal-vessel-segmentation; put the contents of DRIVE/ here "
                "(training/, test/)", lambda s, d, k: load_drive(s, image_dir=d, skipped=k)),
    SuiteSource("bccd", "fetch github:Shenggan/BCCD_Dataset; put the contents of BCCD/ here "
                "(Annotations/, JPEGImages/, ImageSets/)", lambda s, d, k: load_bccd(s, skipped=k)),
    SuiteSource("totalseg", "fetch github:wasserth/TotalSegmentator; put the contents of tests/reference_files/ here "
                "(example_ct_sm.nii.gz, example_seg.nii.gz, example_mr_sm.nii.gz, example_seg_mr.nii.gz, "
                "example_ct_dicom/, example_seg_dicom.nii.gz)", lambda s, d, k: load_totalseg(s, image_dir=d, skipped=k)),
    SuiteSource("dcmqi", "fetch github:QIICR/dcmqi; put the contents of data/segmentations/ here (ct-3slice/, liver.dcm)",
                lambda s, d, k: load_dcmqi(s, image_dir=d, skipped=k)),
)
NAMES = tuple(s.name for s in SOURCES)


def build_source(source: SuiteSource, src: Path, out: Path) -> tuple[dict[str, list[Record]], Counter]:
    """Convert one source into ``out``; returns split -> records as written (paths relative to ``out``)."""
    skipped: Counter = Counter()
    records = place_files(source.build(src, out / "images", skipped), out)
    by_split: dict[str, list[Record]] = {split: [] for split in SPLITS}
    for rec in records:
        by_split[rec.meta["split"]].append(rec)
    for split, recs in by_split.items():
        write_jsonl(recs, out / f"{split}.jsonl")
    return by_split, skipped


def _prefixed(rec: Record, folder: str) -> Record:
    return replace(rec, images=[f"{folder}/{p}" for p in rec.images], masks=[f"{folder}/{p}" for p in rec.masks])


def _source_summary(name: str, by_split: dict[str, list[Record]], skipped: Counter) -> dict:
    return {
        "rule": RULES[name],
        "records": {split: len(recs) for split, recs in by_split.items()},
        "tasks": {split: dict(sorted(Counter(r.task for r in recs).items())) for split, recs in by_split.items()},
        "left_out": dict(sorted(skipped.items())),
    }


def _kept(out: Path, name: str, previous: dict) -> tuple[dict[str, list[Record]], dict] | None:
    """The records a run converted earlier into ``out/name`` and their summary (counted again from the
    files; what was left out as the earlier counts.json says, if it says); None if there are none."""
    if not all((out / name / f"{s}.jsonl").is_file() for s in SPLITS):
        return None
    by_split = {split: read_jsonl(out / name / f"{split}.jsonl") for split in SPLITS}
    left_out = previous.get("sources", {}).get(name, {}).get("left_out", {})
    return by_split, _source_summary(name, by_split, Counter(left_out))


def build_suite(sources_dir: Path, out: Path, only: tuple[str, ...] = NAMES, log: Callable[[str], None] = print) -> dict:
    """Every source of ``only`` found under ``sources_dir`` (sources outside ``only`` already converted in
    ``out`` are kept and merged again); returns (and writes to OUT/counts.json) the counts."""
    counts = out / "counts.json"
    previous = json.loads(counts.read_text(encoding="utf-8")) if counts.is_file() else {}
    merged: dict[str, list[Record]] = {split: [] for split in SPLITS}
    summary: dict = {"sources": {}, "missing": {}, "kept": []}
    for source in SOURCES:
        src = sources_dir / source.name
        if source.name not in only:
            kept = _kept(out, source.name, previous)
            if kept is None:
                continue
            by_split, summary["sources"][source.name] = kept
            summary["kept"].append(source.name)
            log(f"kept {source.name}: {out / source.name} from an earlier run (not in --only)")
        elif not src.is_dir():
            summary["missing"][source.name] = source.fetch
            log(f"skipped {source.name}: no folder {src} ({source.fetch})")
            continue
        else:
            by_split, skipped = build_source(source, src, out / source.name)
            summary["sources"][source.name] = _source_summary(source.name, by_split, skipped)
        for split, recs in by_split.items():
            merged[split] += [_prefixed(r, source.name) for r in recs]
    for split, recs in merged.items():
        write_jsonl(recs, out / f"{split}.jsonl")
    summary["merged"] = {split: len(recs) for split, recs in merged.items()}
    counts.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def format_counts(summary: dict) -> list[str]:
    """The table the command prints: records per source and split, then what each source left out."""
    lines = [f"{'source':<16} {'train':>7} {'val':>7} {'test':>7}"]
    for name, s in summary["sources"].items():
        lines.append(f"{name:<16} " + " ".join(f"{s['records'][split]:>7}" for split in SPLITS))
    lines.append(f"{'all':<16} " + " ".join(f"{summary['merged'][split]:>7}" for split in SPLITS))
    for name, s in summary["sources"].items():
        for why, n in s["left_out"].items():
            lines.append(f"  {name}: left out {n}: {why}")
    return lines

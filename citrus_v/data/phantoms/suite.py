"""The synthetic medical suite: schedule, per-sample seeds, records and files on disk.

Sample i of split s is a pure function of (seed, s, i): its generator seed comes from
``SeedSequence([seed, SPLIT_CODE[s], i])``, so splits draw from disjoint streams (no shared
phantom), the output is byte-identical for a seed whatever the worker count, and another
seed gives other samples from the same distribution. (modality, task) pairs are cycled in
a fixed order, so every pair appears and closed answers stay balanced (see text.py).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..boxes import bbox_of
from ..schema import Message, Objects, Record, write_jsonl
from . import document, text, totalseg
from .common import ModalitySpec, save_png
from .ct import SPEC as CT
from .endoscopy import DERM, ENDOSCOPY
from .mr import SPEC as MR
from .us import SPEC as US
from .xray import SPEC as XRAY

SPLITS = ("train", "val", "test")
SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
SPECS: dict[str, ModalitySpec] = {s.modality: s for s in (CT, MR, XRAY, US, ENDOSCOPY, DERM)}
IMAGE_TASKS = ("segmentation", "detection", "vqa_closed", "vqa_open", "cot", "report", "caption")
# generator name -> the tasks it can make; "totalseg_ct"/"totalseg_mr" are the real volumes
SOURCES: dict[str, tuple[str, ...]] = {
    **{m: IMAGE_TASKS for m in SPECS},
    "document": ("document",),
    "totalseg_ct": ("segmentation", "vqa_closed"),
    "totalseg_mr": ("segmentation", "vqa_closed"),
}
DEFAULT_SOURCES = tuple(SOURCES)
ALL_TASKS = tuple(dict.fromkeys(t for ts in SOURCES.values() for t in ts))
DOCUMENT_WEIGHT = 4  # documents appear as often as four (modality, task) pairs: reading digits needs data


@dataclass(frozen=True)
class SuiteConfig:
    """What to generate; validated at construction."""

    seed: int = 0
    size: int = 224
    sources: tuple[str, ...] = DEFAULT_SOURCES
    tasks: tuple[str, ...] = ALL_TASKS
    totalseg_dir: Path | None = None  # None: the volumes shipped in citrus_v/assets/totalseg_example
    rotate_prob: float = 0.25  # share of document pages turned by 90/180/270

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 32:
            raise ValueError(f"SuiteConfig.size must be an int >= 32, got {self.size!r}")
        bad = [s for s in self.sources if s not in SOURCES]
        if bad:
            raise ValueError(f"SuiteConfig.sources: unknown {bad}; choose from {list(SOURCES)}")
        bad = [t for t in self.tasks if t not in ALL_TASKS]
        if bad:
            raise ValueError(f"SuiteConfig.tasks: unknown {bad}; choose from {list(ALL_TASKS)}")
        if not 0.0 <= self.rotate_prob <= 1.0:
            raise ValueError(f"SuiteConfig.rotate_prob must be in [0, 1], got {self.rotate_prob}")
        if not self.schedule():
            raise ValueError(f"SuiteConfig: no source makes any of the tasks {list(self.tasks)}")

    def schedule(self) -> list[tuple[str, str]]:
        """The (source, task) cycle."""
        out = []
        for src in self.sources:
            for task in SOURCES[src]:
                if task in self.tasks:
                    out += [(src, task)] * (DOCUMENT_WEIGHT if src == "document" else 1)
        return out


@dataclass
class Sample:
    """One generated sample before it is written: arrays plus the record's text."""

    image: np.ndarray
    masks: list[np.ndarray]  # one per [SEG], in order
    question: str
    answer: str
    objects: Objects | None
    task: str
    modality: str
    meta: dict
    all_masks: dict[str, np.ndarray] | None = None  # every named structure drawn (dense targets)


def sample_seed(seed: int, split: str, index: int) -> int:
    return int(np.random.SeedSequence([seed, SPLIT_CODE[split], index]).generate_state(1)[0])


def _position(cfg: SuiteConfig, split: str, index: int) -> tuple[list[tuple[str, str]], int]:
    """(schedule, position of the index-th sample in the repeated schedule)."""
    sched = cfg.schedule()
    offset = sample_seed(cfg.seed, split, -1 & 0xFFFF) % len(sched)  # seed-dependent start of the cycle
    return sched, index + offset


def source_of(cfg: SuiteConfig, split: str, index: int) -> str:
    """The generator that makes the index-th sample of a split (without making it)."""
    sched, pos = _position(cfg, split, index)
    return sched[pos % len(sched)][0]


def make_sample(cfg: SuiteConfig, split: str, index: int) -> Sample:
    """The index-th sample of a split (pure function of cfg, split and index)."""
    sched, pos = _position(cfg, split, index)
    src, task = sched[pos % len(sched)]
    k = pos // len(sched)  # occurrence count of this pair: drives answer balance
    flip = (pos % len(sched)) % 2  # neighbouring pairs start on opposite answers
    s_seed = sample_seed(cfg.seed, split, index)
    rng = np.random.default_rng(s_seed)
    meta = {"phantom_id": f"{split}-{index:07d}", "split": split, "seed": cfg.seed,
            "sample_seed": s_seed, "generator": src}
    if src == "document":
        doc = document.render(rng, cfg.size, cfg.rotate_prob)
        q, a, analyte = document.question(doc, rng)
        centres = document.character_centres(doc)  # once for both targets
        meta.update(rotation=doc.rotation, analyte=analyte, copy_points=[document.copy_points(doc, a, centres)],
                    reading=document.reading_lines(doc, centres))
        return Sample(doc.image, [], q, a, None, "document", "document", meta, {})
    if src.startswith("totalseg_"):
        root = cfg.totalseg_dir or totalseg.default_dir()
        ts = totalseg.sample(root, src.split("_", 1)[1], split, task, k + flip, rng, cfg.size)
        meta.update(ts.meta)
        meta["phantom_id"] = f"{split}-{src}-z{ts.meta['slice']}"  # the slice is the shared object
        return Sample(ts.image, [ts.masks[n] for n in ts.seg], ts.question, ts.answer, None, task, ts.modality, meta,
                      ts.all_masks)
    spec = SPECS[src]
    plan = text.plan(spec, task, k, rng, flip)
    ph = spec.render(rng, cfg.size, plan.present, plan.side, plan.large)
    qa = text.build(spec, ph, task, plan, rng)
    objects = Objects(list(qa.det), [bbox_of(ph.masks[n]) for n in qa.det]) if qa.det else None
    meta.update(template=plan.template, present=plan.present, side=spec.locations[plan.side],
                size="large" if plan.large else "small")
    return Sample(ph.image, [ph.masks[n] for n in qa.seg], qa.question, qa.answer, objects, task, spec.modality, meta,
                  ph.masks)


def _write_sample(cfg: SuiteConfig, out_dir: Path, split: str, index: int) -> Record:
    s = make_sample(cfg, split, index)
    stem = f"{split}/{index:07d}"
    img_rel = f"images/{stem}.png"
    save_png(s.image, out_dir / img_rel)
    mask_rel = []
    for j, m in enumerate(s.masks):
        rel = f"masks/{stem}_{j}.png"
        save_png(m, out_dir / rel)
        mask_rel.append(rel)
    return Record(
        messages=[Message("user", "<image>" + s.question), Message("assistant", s.answer)],
        images=[img_rel], masks=mask_rel, objects=s.objects, task=s.task, modality=s.modality, meta=s.meta,
    )


def _write_chunk(args: tuple[SuiteConfig, Path, str, int, int]) -> list[dict]:
    cfg, out_dir, split, start, stop = args
    return [_write_sample(cfg, out_dir, split, i).to_dict() for i in range(start, stop)]


def generate_suite(
    out_dir: str | Path,
    n_train: int,
    n_val: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    size: int = 224,
    modalities: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    *,
    workers: int = 1,
    totalseg_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Write ``out_dir/{train,val,test}.jsonl`` with ``images/`` and ``masks/``; return the JSONL paths.

    ``modalities`` are source names (ct, mr, xray, us, endoscopy, derm, document, totalseg_ct,
    totalseg_mr; "totalseg" means both). val/test default to a fifth of train (at least 1).
    """
    from tqdm import tqdm

    srcs = DEFAULT_SOURCES
    if modalities is not None:
        srcs = tuple(dict.fromkeys(x for m in modalities for x in (
            ("totalseg_ct", "totalseg_mr") if m == "totalseg" else (m,))))
    cfg = SuiteConfig(seed, size, srcs, tuple(tasks) if tasks is not None else ALL_TASKS,
                      Path(totalseg_dir) if totalseg_dir is not None else None)
    counts = {"train": n_train, "val": n_val if n_val is not None else max(1, n_train // 5),
              "test": n_test if n_test is not None else max(1, n_train // 5)}
    for split, n in counts.items():
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"generate_suite: n_{split} must be an int >= 0, got {n!r}")
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    bar = tqdm(total=sum(counts.values()), desc="phantoms", unit="sample", disable=not progress)
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        for split, n in counts.items():
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
            (out / "masks" / split).mkdir(parents=True, exist_ok=True)
            step = 64
            jobs = [(cfg, out, split, a, min(a + step, n)) for a in range(0, n, step)]
            chunks = pool.map(_write_chunk, jobs) if pool else map(_write_chunk, jobs)
            records: list[Record] = []
            for job, chunk in zip(jobs, chunks):
                records += [Record.from_dict(d) for d in chunk]
                bar.update(job[4] - job[3])
            paths[split] = out / f"{split}.jsonl"
            write_jsonl(records, paths[split])
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    return paths


def document_pages(out_dir: str | Path, n: int, *, seed: int = 0, size: int = 224, start: int = 100_000,
                   progress: bool = True) -> Path:
    """``n`` more lab pages of the suite's *train* split, from index ``start`` on (past the suite's own train
    records, so none is a val or test page), each one conversation asking all of its values in a seeded
    order, with their ``copy_points`` and ``reading`` lines: four answers per page read instead of one. Writes
    ``out_dir/doc_pages.jsonl`` and ``out_dir/images/doc_pages/``; returns the JSONL path."""
    from tqdm import tqdm

    cfg = SuiteConfig(seed, size)  # only its schedule is used (which indices are pages): the same on every machine
    out = Path(out_dir)
    (out / "images" / "doc_pages").mkdir(parents=True, exist_ok=True)
    records: list[Record] = []
    index = start
    with tqdm(total=n, desc="document pages", unit="page", disable=not progress) as bar:
        while len(records) < n:
            if source_of(cfg, "train", index) == "document":
                seed_i = sample_seed(seed, "train", index)
                page = document.render(np.random.default_rng(seed_i), size, cfg.rotate_prob)  # make_sample's page
                order = np.random.default_rng(seed_i + 1).permutation(len(page.values))
                centres = document.character_centres(page)  # once for both targets
                messages, points = document.value_conversation(page, order, centres=centres)
                path = Path("images") / "doc_pages" / f"train-{index:07d}.png"
                save_png(page.image, out / path)
                records.append(Record(messages=messages, images=[str(path)], task="document", modality="document",
                                      meta={"phantom_id": f"train-{index:07d}", "split": "train", "seed": seed,
                                            "sample_seed": seed_i, "generator": "document", "rotation": page.rotation,
                                            "copy_points": points, "reading": document.reading_lines(page, centres)}))
                bar.update(1)
            index += 1
    write_jsonl(records, out / "doc_pages.jsonl")
    return out / "doc_pages.jsonl"


def iter_texts(n: int = 2000, seed: int = 0, size: int = 64, modalities: Sequence[str] | None = None,
               tasks: Sequence[str] | None = None) -> Iterator[str]:
    """Every question and answer the suite makes for n samples per split (tokenizer training text).

    Detection answers are the ``<boxes>`` placeholder; the chat template's box JSON is not here.
    """
    srcs = DEFAULT_SOURCES if modalities is None else tuple(modalities)
    cfg = SuiteConfig(seed, size, srcs, tuple(tasks) if tasks is not None else ALL_TASKS)
    for split in SPLITS:
        for i in range(n):
            s = make_sample(cfg, split, i)
            yield s.question
            yield s.answer
            if s.objects is not None:
                yield from s.objects.ref

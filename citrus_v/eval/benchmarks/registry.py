"""The benchmarks of the published table: where each one's released file sits under --data-root,
which loader reads it and which protocol scores it. docs/evaluation.md shows the same layout.

Paths are globs relative to the data root; the first candidate that matches a file is used
(sorted, first match). Images sit where each release unpacks them, beside its file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from citrus_v.data.schema import Record, read_jsonl
from citrus_v.data.sources import load_meddocbench, load_mecovqa_g, load_pathvqa, load_pmc_vqa, load_slake, load_vqa_rad
from citrus_v.eval.benchmarks.reports import load_chexpert_plus
from citrus_v.eval.benchmarks.text_qa import load_medmcqa, load_medqa, load_medxpertqa, load_pubmedqa

# the columns each protocol reports (document adds one per category the file holds)
COLUMNS: dict[str, tuple[str, ...]] = {
    "vqa": ("closed", "open", "all"),
    "multiple_choice": ("accuracy",),
    "yes_no_maybe": ("accuracy",),
    "report": ("rougeL", "cider", "rate"),
    "document": ("all (ANLS)",),
    "segmentation": ("CT", "MR", "X-ray", "US", "endoscopy", "all"),
    "detection": ("p50",),
}
PROTOCOLS = tuple(COLUMNS)


@dataclass(frozen=True)
class Benchmark:
    name: str  # what --only takes
    row: str  # the published table's row
    files: tuple[str, ...]  # glob candidates under the data root, in order of preference
    load: Callable[[Path, Path], list[Record]]  # (file, image_dir for embedded images) -> records
    protocol: str
    published: dict[str, float] | None = None  # Citrus-V 8B as the paper reports it, per column

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"benchmark {self.name}: protocol {self.protocol!r} is not one of {PROTOCOLS}")
        unknown = set(self.published or {}) - set(COLUMNS[self.protocol])
        if unknown:
            raise ValueError(f"benchmark {self.name}: published numbers for unknown columns {sorted(unknown)}")

    def find(self, root: Path) -> Path | None:
        for pattern in self.files:
            hits = sorted(p for p in root.glob(pattern) if p.is_file())
            if hits:
                return hits[0]
        return None


def _jsonl(path: Path, _image_dir: Path) -> list[Record]:
    """citrus-v's own JSON-lines records, image paths made absolute against the file's folder."""
    from dataclasses import replace

    from citrus_v.data.schema import resolve

    return [replace(r, images=[str(resolve(p, path.parent)) for p in r.images],
                    masks=[str(resolve(p, path.parent)) for p in r.masks]) for r in read_jsonl(path)]


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("vqa-rad", "VQA-RAD", ("VQA-RAD/testset.json",), lambda f, d: load_vqa_rad(f), "vqa",
              {"all": 64.3}),
    Benchmark("slake", "SLAKE", ("SLAKE/test.json",), lambda f, d: load_slake(f, languages=("en",)), "vqa",
              {"all": 84.9}),
    Benchmark("pathvqa", "PathVQA", ("PathVQA/data/test-*.parquet", "PathVQA/test.parquet"),
              lambda f, d: load_pathvqa(f, image_dir=d), "vqa", {"all": 62.0}),
    Benchmark("pmc-vqa", "PMC-VQA", ("PMC-VQA/test_clean.csv", "PMC-VQA/test.csv"), lambda f, d: load_pmc_vqa(f),
              "multiple_choice", {"accuracy": 55.6}),
    Benchmark("medxpertqa-mm", "MedXpertQA MM", ("MedXpertQA/MM/test.jsonl",), lambda f, d: load_medxpertqa(f),
              "multiple_choice", {"accuracy": 25.1}),
    Benchmark("medxpertqa-text", "MedXpertQA Text", ("MedXpertQA/Text/test.jsonl",), lambda f, d: load_medxpertqa(f),
              "multiple_choice"),
    Benchmark("pubmedqa", "PubMedQA", ("PubMedQA/test_set.json",), lambda f, d: load_pubmedqa(f), "yes_no_maybe"),
    Benchmark("medmcqa", "MedMCQA", ("MedMCQA/dev.json",), lambda f, d: load_medmcqa(f), "multiple_choice"),
    Benchmark("medqa-usmle", "MedQA-USMLE",
              ("MedQA/questions/US/4_options/phrases_no_exclude_test.jsonl", "MedQA/questions/US/test.jsonl"),
              lambda f, d: load_medqa(f), "multiple_choice"),
    Benchmark("chexpert-plus", "CheXpert Plus", ("CheXpert-Plus/df_chexpert_plus_240401.csv",),
              lambda f, d: load_chexpert_plus(f), "report", {"rougeL": 28.9}),
    Benchmark("meddocbench", "MedDocBench", ("MedDocBench/*.tsv", "MedDocBench/*.parquet"),
              lambda f, d: load_meddocbench(f, image_dir=d), "document"),
    Benchmark("mecovqa-g", "MeCoVQA-G", ("MeCoVQA-G/*test*.json", "MeCoVQA-G/*test*.jsonl"),
              lambda f, d: load_mecovqa_g(f), "segmentation",
              {"CT": 64.0, "MR": 43.1, "X-ray": 14.7, "US": 83.8, "endoscopy": 92.8}),
    Benchmark("detection", "Detection", ("detection/test.jsonl",), _jsonl, "detection", {"p50": 44.6}),
)


def by_name(name: str) -> Benchmark:
    for b in BENCHMARKS:
        if b.name == name:
            return b
    raise KeyError(name)

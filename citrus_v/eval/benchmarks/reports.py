"""CheXpert Plus report generation, from the release's CSV (a table of reports beside PNG images)."""

from __future__ import annotations

from pathlib import Path

from citrus_v.data.schema import Record
from citrus_v.data.sources.common import SourceError, make_record, need, read_table
from citrus_v.data.sources.reports import DEFAULT_REPORT_PROMPT


def load_chexpert_plus(src: str | Path, *, images_root: str | Path | None = None, split: str = "valid") -> list[Record]:
    """CheXpert Plus ``df_chexpert_plus_240401.csv`` (github.com/Stanford-AIMI/chexpert-plus, README
    "RadGraph-XL"; one row per image): ``path_to_image`` (``train/patientNNNNN/studyN/viewN_frontal.jpg``),
    ``section_findings``, ``section_impression``, ``split`` and more. Rows of ``split`` (default the
    held-out "valid") with a findings section of at least two words, as the release's own example keeps.
    The image is looked up under ``images_root`` (default: ``PNG`` beside the CSV) with the path as
    written, else with a ``.png`` suffix (the PNG release). The reference is
    ``Findings: <findings> Impression: <impression>``, the report form the model writes."""
    src = Path(src)
    root = Path(images_root) if images_root is not None else src.parent / "PNG"
    records = []
    for i, row in enumerate(read_table(src), start=2):  # line 1 is the header
        if str(row.get("split", "")).strip() != split:
            continue
        findings = str(row.get("section_findings") or "").strip()
        if len(findings.split()) < 2:
            continue
        rel = str(need(row, ("path_to_image",), src, i))
        image = next((p for p in (root / rel, (root / rel).with_suffix(".png")) if p.is_file()), None)
        if image is None:
            raise SourceError(src, f"image {rel} is not under {root} (as .jpg or .png)", row=i, field="path_to_image")
        impression = str(row.get("section_impression") or "").strip()
        reference = f"Findings: {findings} Impression: {impression}".strip()
        records.append(make_record(DEFAULT_REPORT_PROMPT, reference, images=[str(image.resolve())], task="report",
                                   modality="X-ray", meta={"source": "chexpert-plus", "path": rel}, path=src, row=i))
    return records

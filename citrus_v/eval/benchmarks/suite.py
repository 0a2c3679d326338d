"""Run every benchmark whose released file is under the data root; score each by its protocol; rows.

Prediction goes through ``citrus_v.eval.runner`` (``predict_records``, and ``evaluate`` for the
tasks ``citrus-v eval`` already scores), so the two commands ask a model the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from citrus_v.data.schema import Record
from citrus_v.eval.benchmarks import protocols
from citrus_v.eval.benchmarks.registry import BENCHMARKS, COLUMNS, Benchmark
from citrus_v.eval.benchmarks.table import NOT_COMPUTED, SKIPPED, Cell, Row
from citrus_v.eval.metrics.aggregate import Aggregate
from citrus_v.eval.runner import EvalResult, PredictorLike, aggregate, evaluate, predict_records, reference_of

SEG_MODALITIES = COLUMNS["segmentation"][:-1]
RATE_NOTE = "RaTE needs the RaTE-NER model; pass a rate scorer (protocols.ReportScorer)"


def _pct(a: Aggregate, protocol: str, column: str, published: dict | None) -> Cell:
    value = None if a.value is None else 100.0 * a.value
    return Cell(column, value, a.n, protocol, a.aggregation, published=(published or {}).get(column))


def _choice_cells(b: Benchmark, records: Sequence[Record], answers: Sequence[str]) -> tuple[list[Cell], list[dict]]:
    right, found, log = [], [], []
    for rec, answer in zip(records, answers):
        reference = reference_of(rec)
        if b.protocol == "yes_no_maybe":
            score, hit = protocols.score_yes_no_maybe(answer, reference)
        else:
            options = rec.meta.get("options") or rec.meta["choices"]
            score, hit = protocols.score_multiple_choice(answer, reference, options)
        right.append(score)
        found.append(hit)
        log.append({"reference": reference, "answer": answer, "correct": score, "option_found": hit})
    n = len(right)
    acc = 100.0 * sum(right) / n if n else None
    missed = n - sum(found)
    cell = Cell("accuracy", acc, n, b.protocol, "mean over questions (no option found = wrong)",
                note=f"no option found in {missed}", published=(b.published or {}).get("accuracy"))
    return [cell], log


def _vqa_cells(b: Benchmark, result: EvalResult) -> list[Cell]:
    m = result.metrics
    per = [s.scores.get("correct", s.scores.get("recall")) for s in result.samples if s.task in ("vqa_closed", "vqa_open")]
    everything = Aggregate(sum(per) / len(per) if per else None, len(per),
                           "mean over questions of closed 0/1 and open recall")
    return [_pct(m["vqa_closed_acc"], "vqa", "closed", b.published), _pct(m["vqa_open_recall"], "vqa", "open", b.published),
            _pct(everything, "vqa", "all", b.published)]


def _report_cells(b: Benchmark, result: EvalResult, rate_scorer: protocols.ReportScorer | None) -> list[Cell]:
    m = result.metrics
    cider = m["report_cider"]
    cells = [_pct(m["report_rougeL"], "report", "rougeL", b.published),
             Cell("cider", cider.value, cider.n, "report", cider.aggregation)]
    reps = [s for s in result.samples if s.task == "report"]
    if rate_scorer is None:
        cells.append(Cell("rate", None, len(reps), "report", "official RaTE-Score", status=NOT_COMPUTED, note=RATE_NOTE))
    else:
        value = rate_scorer([s.answer for s in reps], [s.reference for s in reps])
        cells.append(Cell("rate", 100.0 * value, len(reps), "report", "the given RaTE scorer, corpus"))
    return cells


def _document_cells(b: Benchmark, result: EvalResult, records: Sequence[Record]) -> list[Cell]:
    cells = [_pct(result.metrics["doc_anls"], "document", "all (ANLS)", b.published)]
    categories = sorted({str(r.meta.get("category")) for r in records if r.meta.get("category")})
    for cat in categories:
        sub = aggregate([s for s, r in zip(result.samples, records) if str(r.meta.get("category")) == cat])
        cells.append(_pct(sub.metrics["doc_anls"], "document", f"{cat} (ANLS)", b.published))
    return cells


def _seg_cells(b: Benchmark, result: EvalResult) -> list[Cell]:
    cells = []
    for mod in SEG_MODALITIES + tuple(m for m in result.per_modality if m not in SEG_MODALITIES):
        agg = result.per_modality.get(mod, {}).get("seg_dice_mean")
        cells.append(_pct(agg or Aggregate(None, 0, "mean over masks (one per [SEG])"), "segmentation", mod, b.published))
    cells.append(_pct(result.metrics["seg_dice_mean"], "segmentation", "all", b.published))
    return cells


def run_one(b: Benchmark, path: Path, predictor: PredictorLike, work: Path, *, limit: int | None = None,
            batch_size: int = 1, progress: bool = False, rate_scorer: protocols.ReportScorer | None = None) -> Row:
    image_dir = work / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    records = b.load(path, image_dir)
    records = records[:limit] if limit is not None else records
    row = Row(b.name, b.row, str(path))
    if b.protocol in ("multiple_choice", "yes_no_maybe"):
        preds = predict_records(predictor, records, "/", batch_size=batch_size, progress=progress, desc=b.name)
        row.cells, log = _choice_cells(b, records, [p.answer for p in preds])
    else:
        result = evaluate(predictor, records, "/", batch_size=batch_size, progress=progress)
        log = [asdict(s) for s in result.samples]
        if b.protocol == "vqa":
            row.cells = _vqa_cells(b, result)
        elif b.protocol == "report":
            row.cells = _report_cells(b, result, rate_scorer)
        elif b.protocol == "document":
            row.cells = _document_cells(b, result, records)
        elif b.protocol == "segmentation":
            row.cells = _seg_cells(b, result)
        else:
            row.cells = [_pct(result.metrics["det_p50"], "detection", "p50", b.published)]
    with (work / "predictions.jsonl").open("w", encoding="utf-8") as fh:
        for entry in log:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return row


def skipped_row(b: Benchmark, root: Path) -> Row:
    looked = " or ".join(str(root / p) for p in b.files)
    return Row(b.name, b.row, f"not found: {looked}",
               [Cell(col, None, 0, b.protocol, "-", status=SKIPPED, note=f"looked for {looked}",
                     published=(b.published or {}).get(col)) for col in COLUMNS[b.protocol]])


def run_benchmarks(root: Path, out: Path, make_predictor: Callable[[], PredictorLike], *, only: str | None = None,
                   limit: int | None = None, batch_size: int = 1, progress: bool = False,
                   rate_scorer: protocols.ReportScorer | None = None, say: Callable[[str], None] = print) -> list[Row]:
    """One row per benchmark (``only``: just that one); the predictor is made once, on first need."""
    chosen = [b for b in BENCHMARKS if only is None or b.name == only]
    rows, predictor = [], None
    for b in chosen:
        path = b.find(root)
        if path is None:
            row = skipped_row(b, root)
            say(f"skip {b.name}: {row.cells[0].note}")
        else:
            say(f"run {b.name}: {path}")
            predictor = predictor or make_predictor()
            row = run_one(b, path, predictor, out / b.name, limit=limit, batch_size=batch_size,
                          progress=progress, rate_scorer=rate_scorer)
        rows.append(row)
    return rows

"""Run a predictor over records, score each by its task, aggregate overall and per modality.

Routing (``Record.task``; when absent: records with masks are segmentation, with objects
detection, anything else is left unscored and counted):

| task          | prediction            | ground truth                       | per-sample scores   |
|---------------|-----------------------|------------------------------------|---------------------|
| vqa_closed    | ``answer``            | last assistant message's answer    | closed choice match |
| vqa_open      | ``answer``            | same                               | token recall, F1    |
| cot           | ``answer``            | text inside ``<answer>``; scored as vqa_closed when that is a yes/no or option letter, else as vqa_open |
| detection     | ``boxes`` (orig. px)  | ``objects.bbox`` (orig. px)        | first-box hit (also of the box as written) |
| segmentation  | ``masks`` (bool HxW)  | ``masks`` PNGs, nonzero = fg       | Dice per mask       |
| report        | ``answer``            | last assistant message             | ROUGE-L; impression verdict (normal or not) |
| document      | ``answer``            | last assistant message             | ANLS, exact         |
| caption, text | not scored            |                                    |                     |

Segmentation pairs the i-th ground-truth mask with the i-th predicted mask; a missing
prediction counts as an empty mask (Dice 0 unless the truth is empty too), extra predicted
masks are not scored (their count is kept in predictions.jsonl).

The predictor is called as ``predict(images, prompt)`` with ``images`` the record's image
paths resolved against ``base_dir`` and ``prompt`` the last user message before the last
assistant message, ``<image>`` placeholders kept, so images sit where training put them (the
chat template puts images first when a prompt has none). Earlier turns are not replayed.
ms-swift's ``<ref-object>``/``<bbox>`` placeholders in the prompt are filled from the record's
``objects`` exactly as training fills them (``PromptFiller``; the refs and boxes of earlier turns
are counted, as in training), in the model's template style.
With ``batch_size > 1`` and a predictor that has ``predict_batch(requests)``, records go in
batches of that size (same greedy answers, faster on an accelerator).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

import numpy as np

from citrus_v.data.schema import Record, read_json_lines, resolve
from citrus_v.eval.metrics import detection, document, report, segmentation, surface, vqa
from citrus_v.eval.metrics.aggregate import UNKNOWN_GROUP, Aggregate, ScoreAccumulator
from citrus_v.data.answers import split_think_answer, strip_box_markup
from citrus_v.eval.parsing import closed_answer_correct, is_closed_reference
from citrus_v.infer.types import Prediction

# the keys eval.json always has, in table order, with how each is aggregated
METRIC_KEYS: dict[str, str] = {
    "vqa_closed_acc": "mean over samples",
    "vqa_open_recall": "mean over samples",
    "vqa_open_f1": "mean over samples",
    "det_p50": "mean over samples with >=1 GT box (first predicted box, IoU>=0.5 with any GT box)",
    "det_p50_text": "as det_p50, on the first box as the model wrote it (before the segmenter tightened it)",
    "det_map": "micro over boxes, COCO AP@[.5:.95], class-agnostic",
    "det_map50": "micro over boxes, COCO AP@.5, class-agnostic",
    "seg_dice_mean": "mean over masks (one per [SEG])",
    "seg_dice_median": "median over masks (one per [SEG])",
    "seg_hd95_mean": "mean over masks with both prediction and truth non-empty (95th-percentile Hausdorff, pixels)",
    "seg_nsd_mean": f"mean over masks (normalised surface Dice, tolerance {surface.NSD_TOLERANCE_PX:g} px)",
    "report_bleu4": "corpus BLEU-4 over samples (box markup removed)",
    "report_rougeL": "mean over samples (ROUGE-L F, box markup removed)",
    "report_cider": "mean over samples (CIDEr-D, corpus idf, box markup removed)",
    "report_verdict_acc": "mean over samples (the impression's normal/abnormal verdict equals the reference's)",
    "report_abnormal_recall": "mean over samples whose reference is abnormal (the report calls it abnormal too)",
    "doc_anls": "mean over samples (ANLS, threshold 0.5)",
    "doc_exact": "mean over samples (normalised exact match)",
}
SCORED_TASKS = ("vqa_closed", "vqa_open", "detection", "segmentation", "report", "document")


class PredictorLike(Protocol):
    def predict(self, images: list[str], prompt: str) -> Prediction: ...

    def predict_batch(self, requests: list[tuple[list[str], str]]) -> list[Prediction]: ...


@dataclass
class SampleResult:
    """One record's prediction and scores, as written to predictions.jsonl."""

    index: int
    task: str  # what it was scored as (one of SCORED_TASKS) or "unscored"
    modality: str
    prompt: str
    reference: str
    answer: str
    scores: dict[str, float] = field(default_factory=dict)  # per-sample metric values
    dice: list[float] = field(default_factory=list)  # one per ground-truth mask
    hd95: list[float | None] = field(default_factory=list)  # one per ground-truth mask; None: one side empty
    nsd: list[float] = field(default_factory=list)  # one per ground-truth mask
    pred_boxes: list[list[float]] = field(default_factory=list)
    text_boxes: list[list[float]] = field(default_factory=list)  # as the model wrote them (= pred_boxes untightened)
    gt_boxes: list[list[float]] = field(default_factory=list)
    num_pred_masks: int = 0
    note: str | None = None


@dataclass
class EvalResult:
    samples: list[SampleResult]
    metrics: dict[str, Aggregate]
    per_modality: dict[str, dict[str, Aggregate]]
    counts: dict[str, int]

    def to_json(self) -> dict:
        out: dict = {k: a.to_dict() for k, a in self.metrics.items()}
        out["per_modality"] = {m: {k: a.to_dict() for k, a in ms.items()} for m, ms in self.per_modality.items()}
        out["counts"] = dict(self.counts)
        out["units"] = "fractions in [0, 1], except report_cider (CIDEr-D scale, x10) and seg_hd95_mean (pixels)"
        return out


# --- reading a record ------------------------------------------------------------------------
def task_of(rec: Record) -> str | None:
    if rec.task is not None:
        return rec.task
    if rec.masks:
        return "segmentation"
    if rec.objects is not None:
        return "detection"
    return None


def prompt_of(rec: Record) -> str:
    return _last_user(rec.messages)


def _last_user(messages) -> str:  # noqa: ANN001
    last_assistant = max(i for i, m in enumerate(messages) if m.role == "assistant")
    users = [m.content for m in messages[:last_assistant] if m.role == "user"]
    return users[-1].strip() if users else ""


@dataclass(frozen=True)
class PromptFiller:
    """A record's prompt with its box and ref placeholders filled as training fills them: the template
    ``style`` (``citrus_v.data.placeholders``) and the model's resize rule ``resized_hw(h, w)``."""

    style: str
    resized_hw: Callable[[int, int], tuple[int, int]]

    @classmethod
    def for_predictor(cls, predictor, style: str = "auto") -> "PromptFiller | None":  # noqa: ANN001
        """From a ``Predictor`` (its template's resize rule, the style its model learned); None for a
        predictor without a chat template (its prompts are sent as written)."""
        from citrus_v.data.placeholders import template_style_for

        template, model = getattr(predictor, "template", None), getattr(predictor, "model", None)
        if template is None or model is None:
            return None
        return cls(template_style_for(model.config.name, style), template.processor.resized_hw)

    def __call__(self, rec: Record, base_dir: str | Path) -> str:
        from citrus_v.data.checks import image_hw
        from citrus_v.data.medical_io import MAX_IMAGE_PIXELS
        from citrus_v.data.placeholders import fill_box_placeholders, uses_placeholders

        if not uses_placeholders(rec.messages, self.style):
            return prompt_of(rec)
        hw = [image_hw(resolve(rec.images[0], base_dir), MAX_IMAGE_PIXELS)] if rec.images else []
        resized = [self.resized_hw(*hw[0])] if hw else []
        return _last_user(fill_box_placeholders(rec.messages, rec.objects, hw, resized, self.style))


def reference_of(rec: Record) -> str:
    """The last assistant message; for chain-of-thought, the text inside ``<answer>``."""
    text = [m.content for m in rec.messages if m.role == "assistant"][-1]
    return split_think_answer(text).answer


def load_mask(path: Path) -> np.ndarray:
    """A ground-truth mask file as bool (H, W); nonzero in any channel is foreground."""
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"ground-truth mask {path} does not exist")
    arr = np.asarray(Image.open(path))
    return (arr != 0).any(axis=-1) if arr.ndim == 3 else arr != 0  # (H, W, C) -> (H, W)


# --- scoring one record ----------------------------------------------------------------------
def score_record(index: int, rec: Record, pred: Prediction, base_dir: str | Path) -> SampleResult:
    task = task_of(rec)
    reference = reference_of(rec)
    if task == "cot":
        task = "vqa_closed" if is_closed_reference(reference) else "vqa_open"
    s = SampleResult(index=index, task=task if task in SCORED_TASKS else "unscored",
                     modality=rec.modality or UNKNOWN_GROUP, prompt=prompt_of(rec), reference=reference,
                     answer=pred.answer, num_pred_masks=len(pred.masks),
                     pred_boxes=[[float(v) for v in b.bbox] for b in pred.boxes],
                     text_boxes=[[float(v) for v in (b.bbox if b.text_bbox is None else b.text_bbox)] for b in pred.boxes])
    if s.task == "vqa_closed":
        s.scores["correct"] = closed_answer_correct(pred.answer, reference)
    elif s.task == "vqa_open":
        s.scores["recall"] = vqa.token_recall(pred.answer, reference)
        s.scores["f1"] = vqa.token_f1(pred.answer, reference)
    elif s.task == "detection":
        s.gt_boxes = gt_boxes(rec, base_dir)
        if s.gt_boxes:
            s.scores["p50_hit"] = float(detection.first_box_hit(s.pred_boxes, s.gt_boxes))
            s.scores["p50_text_hit"] = float(detection.first_box_hit(s.text_boxes, s.gt_boxes))
        else:
            s.note = "no ground-truth box: left out of det_p50"
    elif s.task == "segmentation":
        s.dice, s.hd95, s.nsd = _score_masks(index, rec, pred, base_dir)
    elif s.task == "report":
        # prose against prose: the reference holds a <boxes> placeholder where the model writes
        # coordinates, so box markup leaves both sides (boxes are the detection metrics' job)
        s.reference = strip_box_markup(reference)
        s.answer = strip_box_markup(_report_text(pred))
        s.scores["rougeL"] = report.rouge_l(s.answer, s.reference)
    elif s.task == "document":
        s.scores["anls"] = document.anls(pred.answer, reference)
        s.scores["exact"] = document.field_exact(pred.answer, reference)
    else:
        s.note = f"task {task!r} is not scored"
    return s


def gt_boxes(rec: Record, base_dir: str | Path) -> list[list[float]]:
    """The record's boxes in its first image's original pixels (norm1 fractions scaled by its size)."""
    if rec.objects is None:
        return []
    if rec.objects.bbox_type == "real" or not rec.images:
        return [list(map(float, b)) for b in rec.objects.bbox]
    from citrus_v.data.checks import image_hw
    from citrus_v.data.medical_io import MAX_IMAGE_PIXELS

    return rec.objects.pixels(image_hw(resolve(rec.images[0], base_dir), MAX_IMAGE_PIXELS))


def _report_text(pred: Prediction) -> str:
    """The answer text; when the predictor gave only a structured report, its two parts."""
    if pred.answer.strip() or pred.report is None:
        return pred.answer
    return f"Findings: {pred.report.findings} Impression: {pred.report.impression}"


def _score_masks(index: int, rec: Record, pred: Prediction, base_dir: str | Path) -> tuple[list, list, list]:
    """(Dice, HD95, NSD) of every ground-truth mask against the prediction's mask of the same index."""
    out, hd95, nsd = [], [], []
    for i, rel in enumerate(rec.masks):
        gt = load_mask(resolve(rel, base_dir))
        if i < len(pred.masks):
            pm = np.asarray(pred.masks[i].mask)
            if pm.shape != gt.shape:
                raise ValueError(f"record {index}: predicted mask {i} has shape {pm.shape} but ground truth "
                                 f"{rel} has {gt.shape}; masks must be at the original image size")
        else:
            pm = np.zeros_like(gt)  # no prediction for this [SEG]: an empty mask
        out.append(segmentation.dice(pm, gt))
        hd95.append(surface.hd95(pm, gt))
        nsd.append(surface.nsd(pm, gt))
    return out, hd95, nsd


# --- aggregating ---------------------------------------------------------------------------
def _mean_of(samples: Sequence[SampleResult], task: str, score: str, key: str) -> Aggregate:
    acc = ScoreAccumulator()
    for s in samples:
        if s.task == task and score in s.scores:
            acc.append(s.scores[score])
    return Aggregate(acc.mean().value, len(acc), METRIC_KEYS[key])


def _mean_over_masks(samples: Sequence[SampleResult], field_name: str, key: str) -> Aggregate:
    acc = ScoreAccumulator()
    for s in samples:
        for value in getattr(s, field_name):
            if value is not None:  # HD95 of a mask with one side empty has no value
                acc.append(value)
    return Aggregate(acc.mean().value, len(acc), METRIC_KEYS[key])


def summarize(samples: Sequence[SampleResult]) -> dict[str, Aggregate]:
    """Every key of ``METRIC_KEYS`` computed over ``samples`` (value None, n 0 when absent)."""
    m: dict[str, Aggregate] = {}
    m["vqa_closed_acc"] = _mean_of(samples, "vqa_closed", "correct", "vqa_closed_acc")
    m["vqa_open_recall"] = _mean_of(samples, "vqa_open", "recall", "vqa_open_recall")
    m["vqa_open_f1"] = _mean_of(samples, "vqa_open", "f1", "vqa_open_f1")
    m["det_p50"] = _mean_of(samples, "detection", "p50_hit", "det_p50")
    m["det_p50_text"] = _mean_of(samples, "detection", "p50_text_hit", "det_p50_text")

    det = [(s.pred_boxes, s.gt_boxes) for s in samples if s.task == "detection"]
    coco = detection.coco_map(det) if det else None
    n_gt = coco.num_gt if coco else 0
    m["det_map"] = Aggregate(coco.map if coco else None, n_gt, METRIC_KEYS["det_map"])
    m["det_map50"] = Aggregate(coco.map50 if coco else None, n_gt, METRIC_KEYS["det_map50"])

    dice = ScoreAccumulator()
    for s in samples:
        for d in s.dice:
            dice.append(d)
    m["seg_dice_mean"] = Aggregate(dice.mean().value, len(dice), METRIC_KEYS["seg_dice_mean"])
    m["seg_dice_median"] = Aggregate(dice.median().value, len(dice), METRIC_KEYS["seg_dice_median"])
    m["seg_hd95_mean"] = _mean_over_masks(samples, "hd95", "seg_hd95_mean")
    m["seg_nsd_mean"] = _mean_over_masks(samples, "nsd", "seg_nsd_mean")

    reps = [s for s in samples if s.task == "report"]
    preds, refs = [s.answer for s in reps], [s.reference for s in reps]
    b4, n_b4 = report.bleu4(preds, refs) if reps else (None, 0)
    cd, n_cd = report.cider(preds, refs) if reps else (None, 0)
    m["report_bleu4"] = Aggregate(b4, n_b4, METRIC_KEYS["report_bleu4"])
    m["report_rougeL"] = _mean_of(samples, "report", "rougeL", "report_rougeL")
    m["report_cider"] = Aggregate(cd, n_cd, METRIC_KEYS["report_cider"])
    verdicts = [(report.states_normal(s.answer), report.states_normal(s.reference)) for s in reps]
    agree, found = ScoreAccumulator(), ScoreAccumulator()
    for said_normal, is_normal in verdicts:
        agree.append(float(said_normal == is_normal))
        if not is_normal:
            found.append(float(not said_normal))
    m["report_verdict_acc"] = Aggregate(agree.mean().value, len(agree), METRIC_KEYS["report_verdict_acc"])
    m["report_abnormal_recall"] = Aggregate(found.mean().value, len(found), METRIC_KEYS["report_abnormal_recall"])

    m["doc_anls"] = _mean_of(samples, "document", "anls", "doc_anls")
    m["doc_exact"] = _mean_of(samples, "document", "exact", "doc_exact")
    assert list(m) == list(METRIC_KEYS), "summarize and METRIC_KEYS must list the same keys"
    return m


def aggregate(samples: Sequence[SampleResult]) -> EvalResult:
    modalities = sorted({s.modality for s in samples})
    counts = {"records": len(samples), "unscored": sum(s.task == "unscored" for s in samples),
              "det_without_gt": sum(s.task == "detection" and not s.gt_boxes for s in samples)}
    counts.update({f"scored_{t}": sum(s.task == t for s in samples) for t in SCORED_TASKS})
    return EvalResult(samples=list(samples), metrics=summarize(samples),
                      per_modality={mod: summarize([s for s in samples if s.modality == mod]) for mod in modalities},
                      counts=counts)


def evaluate(predictor: PredictorLike, records: Iterable[Record], base_dir: str | Path, *,
             limit: int | None = None, batch_size: int = 1, progress: bool = True,
             prompt_for: Callable[[Record, str | Path], str] | None = None,
             tiles: str | tuple[int, int] | None = None) -> EvalResult:
    """Predict every record (the first ``limit`` when given), score it, aggregate. ``prompt_for(record,
    base_dir)`` makes each prompt (default: ``PromptFiller.for_predictor``, else the last user turn).
    ``tiles`` ("auto" or (rows, cols)): each record's one image is answered on tiles (``predict_tiled``)."""
    records = list(records)[:limit] if limit is not None else list(records)
    prompts = make_prompts(records, base_dir, prompt_for or PromptFiller.for_predictor(predictor))
    preds = predict_records(predictor, records, base_dir, batch_size=batch_size, progress=progress, prompts=prompts,
                            tiles=tiles)
    samples = [score_record(i, rec, pred, base_dir) for i, (rec, pred) in enumerate(zip(records, preds))]
    for s, prompt in zip(samples, prompts):
        s.prompt = prompt.strip()  # what was sent
    return aggregate(samples)


def make_prompts(records: Sequence[Record], base_dir: str | Path,
                 prompt_for: Callable[[Record, str | Path], str] | None) -> list[str]:
    """Each record's prompt (``prompt_for``, or the last user turn); a record whose placeholders cannot be
    filled is a ValueError naming its index."""
    out = []
    for i, rec in enumerate(records):
        try:
            out.append(prompt_for(rec, base_dir) if prompt_for else prompt_of(rec))
        except ValueError as err:
            raise ValueError(f"record {i}: {err}") from None
    return out


def predict_records(predictor: PredictorLike, records: Sequence[Record], base_dir: str | Path, *,
                    batch_size: int = 1, progress: bool = True, desc: str = "citrus-v eval",
                    prompts: Sequence[str] | None = None, tiles: str | tuple[int, int] | None = None) -> list[Prediction]:
    """One prediction per record, asked as ``evaluate`` documents (images resolved, the last user turn
    or ``prompts[i]``); with ``tiles``, ``predictor.predict_tiled`` on each record's one image."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompts = list(prompts) if prompts is not None else [prompt_of(rec) for rec in records]
    if tiles is not None:
        return _predict_tiled_records(predictor, records, base_dir, prompts, tiles, batch_size,
                                      lambda: tqdm(total=len(records), desc=desc, unit="record", disable=not progress))
    batched = batch_size > 1
    step = batch_size if batched else 1
    out: list[Prediction] = []
    with tqdm(total=len(records), desc=desc, unit="record", disable=not progress) as bar:
        for start in range(0, len(records), step):
            chunk = records[start:start + step]
            requests = [([str(resolve(p, base_dir)) for p in rec.images], prompts[start + j]) for j, rec in enumerate(chunk)]
            preds = predictor.predict_batch(requests) if batched else [predictor.predict(*requests[0])]
            if len(preds) != len(chunk):
                raise ValueError(f"the predictor returned {len(preds)} predictions for {len(chunk)} requests")
            out.extend(preds)
            bar.update(len(chunk))
    return out


def _predict_tiled_records(predictor, records: Sequence[Record], base_dir: str | Path, prompts: Sequence[str],  # noqa: ANN001
                           tiles: str | tuple[int, int], batch_size: int, progress_bar) -> list[Prediction]:  # noqa: ANN001
    """``predict_records`` with tiles: one record at a time, ``batch_size`` tiles per generate call;
    ``progress_bar()`` makes the bar once the predictor is known to tile."""
    if not hasattr(predictor, "predict_tiled"):
        raise ValueError("tiles: this predictor has no predict_tiled")
    for i, rec in enumerate(records):  # all of them before any runs: a bad record 900 fails now, not in an hour
        if len(rec.images) != 1:
            raise ValueError(f"record {i}: tiles take one image per record, got {len(rec.images)}")
    out = []
    with progress_bar() as bar:
        for i, rec in enumerate(records):
            try:
                out.append(predictor.predict_tiled(str(resolve(rec.images[0], base_dir)), prompts[i], tiles,
                                                   batch_size=batch_size))
            except ValueError as err:  # a grid this image cannot take, or an image the model refuses
                raise ValueError(f"record {i}: {err}") from None
            bar.update(1)
    return out


def read_predictions(path: str | Path) -> EvalResult:
    """An earlier run's predictions.jsonl, aggregated again (``citrus-v eval --from-predictions``).
    Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    names = {f.name for f in fields(SampleResult)}
    required = {f.name for f in fields(SampleResult) if f.default is MISSING and f.default_factory is MISSING}
    samples = []
    for n, row in read_json_lines(path, "predictions"):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected an object, got {type(row).__name__}")
        unknown, missing = set(row) - names, required - set(row)
        if unknown or missing:
            raise ValueError(f"{path}:{n}: not a predictions.jsonl row (unknown fields {sorted(unknown)}, "
                             f"missing {sorted(missing)})")
        samples.append(SampleResult(**row))
    return aggregate(samples)


# --- writing ---------------------------------------------------------------------------------
def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def to_markdown(result: EvalResult, *, title: str = "citrus-v evaluation") -> str:
    lines = [f"# {title}", "", f"{result.counts['records']} records; {result.counts['unscored']} not scored. "
             "Values are fractions in [0, 1] except CIDEr; n is the number of items aggregated.", "",
             "| metric | value | n | aggregation |", "|---|---|---|---|"]
    lines += [f"| {k} | {_fmt(a.value)} | {a.n} | {a.aggregation} |" for k, a in result.metrics.items()]
    lines += ["", "## Per modality", "", "| modality | metric | value | n | aggregation |", "|---|---|---|---|---|"]
    for mod, ms in result.per_modality.items():
        lines += [f"| {mod} | {k} | {_fmt(a.value)} | {a.n} | {a.aggregation} |" for k, a in ms.items() if a.n]
    return "\n".join(lines) + "\n"


def write_outputs(result: EvalResult, out_dir: str | Path, *, meta: dict | None = None) -> dict[str, Path]:
    """Write eval.json, eval.md and predictions.jsonl into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval.json", "md": out / "eval.md", "predictions": out / "predictions.jsonl"}
    payload = result.to_json()
    if meta:
        payload["meta"] = meta
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    paths["md"].write_text(to_markdown(result), encoding="utf-8")
    with paths["predictions"].open("w", encoding="utf-8") as fh:
        for s in result.samples:
            fh.write(json.dumps(asdict(s), ensure_ascii=False) + "\n")
    return paths

"""Loaders for the multiple-choice and yes/no/maybe QA benchmarks, in each one's released JSON form.

Every loader returns ``Record``s (task ``vqa_closed``) whose assistant answer is the correct
option letter (or yes/no/maybe) and whose ``meta["options"]`` maps letters to option texts;
the prompt is written by ``protocols.multiple_choice_prompt`` so every benchmark asks alike.
Image paths are absolute. Errors name the file, the item and the field (``SourceError``).
"""

from __future__ import annotations

from pathlib import Path

from citrus_v.data.schema import Record
from citrus_v.data.sources.common import SourceError, local_image, make_record, need, read_json
from citrus_v.eval.benchmarks.protocols import multiple_choice_prompt, yes_no_maybe_prompt

LETTERS = "ABCDEFGHIJ"


def _json_lines(src: Path) -> list[dict]:
    """The items of a JSON-lines file (a file of one line parses as one object, still one item)."""
    data = read_json(src)
    data = [data] if isinstance(data, dict) else data
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise SourceError(src, "expected JSON lines, one object per line")
    return data


def _options(value: object, src: Path, i: int, field: str) -> dict[str, str]:
    """``{"A": text, ...}`` from a dict of letters (MedQA, MedXpertQA) or a list in letter order."""
    if isinstance(value, list):
        value = dict(zip(LETTERS, value))
    if not isinstance(value, dict) or len(value) < 2:
        raise SourceError(src, "options must map at least two letters to texts", row=i, field=field)
    out = {str(k).strip().upper(): str(v).strip() for k, v in value.items()}
    if any(k not in LETTERS for k in out):
        raise SourceError(src, f"option keys must be letters A-J, got {sorted(out)}", row=i, field=field)
    return out


def _mc_record(question: str, options: dict[str, str], letter: str, *, images: list[str], src: Path, i: int,
               field: str, source: str, options_in_question: bool = False, meta: dict | None = None) -> Record:
    letter = letter.strip().upper()
    if letter not in options:
        raise SourceError(src, f"answer {letter!r} is not one of the options {sorted(options)}", row=i, field=field)
    prompt = multiple_choice_prompt(question, None if options_in_question else options)
    return make_record(prompt, letter, images=images, task="vqa_closed", modality=None,
                       meta={"source": source, "options": options, **(meta or {})}, path=src, row=i)


def load_medqa(src: str | Path) -> list[Record]:
    """MedQA (USMLE) ``questions/US/test.jsonl`` or ``questions/US/4_options/phrases_no_exclude_test.jsonl``:
    JSON lines of ``{question, answer, options: {A: .., B: ..}, meta_info, answer_idx}``, ``answer_idx``
    the correct letter and ``answer`` its text (format: the MedQA release, github.com/jind11/MedQA,
    README "data_clean" folder)."""
    src = Path(src)
    records = []
    for i, row in enumerate(_json_lines(src)):
        options = _options(need(row, ("options",), src, i), src, i, "options")
        records.append(_mc_record(str(need(row, ("question",), src, i)), options, str(need(row, ("answer_idx",), src, i)),
                                  images=[], src=src, i=i, field="answer_idx", source="medqa",
                                  meta={"meta_info": row.get("meta_info")}))
    return records


def load_medmcqa(src: str | Path, *, cop_base: int = 1) -> list[Record]:
    """MedMCQA ``dev.json`` (the test answers are withheld, so papers report the dev split): JSON lines
    of ``{id, question, opa, opb, opc, opd, cop, choice_type, exp, subject_name, topic_name}``.
    ``cop`` is the correct option: 1-4 in the GitHub release (github.com/medmcqa/medmcqa), 0-3 in the
    Hugging Face ``openlifescienceai/medmcqa`` class label; ``cop_base`` says which (default 1)."""
    src = Path(src)
    records = []
    for i, row in enumerate(_json_lines(src)):
        options = {L: str(need(row, (f"op{L.lower()}",), src, i)) for L in "ABCD"}
        cop = need(row, ("cop",), src, i)
        k = int(cop) - cop_base if str(cop).strip().lstrip("-").isdigit() else -1
        if not 0 <= k < 4:
            raise SourceError(src, f"cop {cop!r} is not an option number {cop_base}..{cop_base + 3}", row=i, field="cop")
        letter = "ABCD"[k]
        records.append(_mc_record(str(need(row, ("question",), src, i)), options, letter, images=[], src=src, i=i,
                                  field="cop", source="medmcqa",
                                  meta={"id": row.get("id"), "subject": row.get("subject_name")}))
    return records


def load_pubmedqa(src: str | Path) -> list[Record]:
    """PubMedQA PQA-L ``test_set.json`` (made by the release's ``split_dataset.py``; same schema as
    ``ori_pqal.json``, github.com/pubmedqa/pubmedqa): one JSON object keyed by PMID, each
    ``{QUESTION, CONTEXTS: [..], LABELS: [..], MESHES, YEAR, final_decision: yes|no|maybe, LONG_ANSWER}``.
    The reasoning-required setting: the model reads the contexts (not the long answer)."""
    src = Path(src)
    data = read_json(src)
    if not isinstance(data, dict):
        raise SourceError(src, f"expected one object keyed by PMID, got {type(data).__name__}")
    records = []
    for i, (pmid, row) in enumerate(data.items()):
        if not isinstance(row, dict):
            raise SourceError(src, "each PMID must map to an object", row=i, field=str(pmid))
        decision = str(need(row, ("final_decision",), src, i)).strip().lower()
        if decision not in ("yes", "no", "maybe"):
            raise SourceError(src, f"final_decision {decision!r} is not yes, no or maybe", row=i, field="final_decision")
        contexts = need(row, ("CONTEXTS",), src, i)
        labels = row.get("LABELS") or [""] * len(contexts)
        context = "\n".join(f"{lab}: {c}" if lab else str(c) for lab, c in zip(labels, contexts))
        prompt = yes_no_maybe_prompt(str(need(row, ("QUESTION",), src, i)), context)
        records.append(make_record(prompt, decision, images=[], task="vqa_closed", modality=None,
                                   meta={"source": "pubmedqa", "pmid": str(pmid)}, path=src, row=i))
    return records


def load_medxpertqa(src: str | Path, *, images_root: str | Path | None = None) -> list[Record]:
    """MedXpertQA ``MM/test.jsonl`` or ``Text/test.jsonl`` (huggingface.co/datasets/TsinghuaC3I/MedXpertQA,
    dataset card "Dataset Structure"): JSON lines of ``{id, question, options: {A: ..}, label, images,
    medical_task, body_system, question_type}``. The question already lists the choices ("Answer
    Choices: (A) .. (B) .."), so the prompt does not repeat them; ``label`` is the letter; Text has 10
    options, MM 5 with ``images`` file names under ``images_root`` (default: ``images`` beside the
    subset folder, as the release's ``images.zip`` unpacks)."""
    src = Path(src)
    root = Path(images_root) if images_root is not None else src.parent.parent / "images"
    records = []
    for i, row in enumerate(_json_lines(src)):
        options = _options(need(row, ("options",), src, i), src, i, "options")
        images = [local_image(root, str(name), src, i, "images") for name in row.get("images") or []]
        records.append(_mc_record(str(need(row, ("question",), src, i)), options, str(need(row, ("label",), src, i)),
                                  images=images, src=src, i=i, field="label", source="medxpertqa",
                                  options_in_question="Answer Choices:" in str(row["question"]),
                                  meta={"id": row.get("id"), "question_type": row.get("question_type")}))
    return records

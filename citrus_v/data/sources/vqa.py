"""Medical VQA sets: VQA-RAD, SLAKE, PathVQA, PMC-VQA.

Image paths in the returned records are absolute (the converter copies them into its output);
images embedded in a file (PathVQA parquet) are written under ``image_dir``.
"""

from __future__ import annotations

from pathlib import Path

from citrus_v.data.schema import Record
from citrus_v.data.sources.common import (
    SourceError,
    image_bytes,
    local_image,
    make_record,
    need,
    norm_modality,
    read_json_list,
    read_table,
    save_image_bytes,
    vqa_task,
)


def _image_root(src: Path, images_root: str | Path | None, folder_names: tuple[str, ...]) -> Path:
    if images_root is not None:
        return Path(images_root)
    for name in folder_names:  # the folder names the published archives unpack to
        if (src.parent / name).is_dir():
            return src.parent / name
    return src.parent


def load_vqa_rad(src: str | Path, *, images_root: str | Path | None = None) -> list[Record]:
    """VQA-RAD ``VQA_RAD Dataset Public.json``: a list of
    ``{qid, image_name, image_organ, question, answer, answer_type: CLOSED|OPEN, question_type, ...}``.

    Images are looked up in ``images_root`` (default: ``VQA_RAD Image Folder`` beside the json).
    VQA-RAD does not state the modality per image, so ``modality`` is None and the organ goes to meta.
    """
    src = Path(src)
    root = _image_root(src, images_root, ("VQA_RAD Image Folder", "images"))
    records = []
    for i, row in enumerate(read_json_list(src)):
        name = str(need(row, ("image_name", "image"), src, i))
        answer = str(need(row, ("answer",), src, i))
        records.append(
            make_record(
                str(need(row, ("question",), src, i)),
                answer,
                images=[local_image(root, name, src, i, "image_name")],
                task=vqa_task(answer, row.get("answer_type")),
                modality=None,
                meta={"source": "vqa-rad", "qid": row.get("qid"), "organ": row.get("image_organ"), "question_type": row.get("question_type")},
                path=src,
                row=i,
            )
        )
    return records


def load_slake(src: str | Path, *, images_root: str | Path | None = None, languages: tuple[str, ...] | None = None) -> list[Record]:
    """SLAKE ``train.json``/``test.json``: a list of
    ``{img_id, img_name: "xmlab102/source.jpg", question, answer, q_lang: en|zh, answer_type, modality, location, ...}``.

    Images under ``images_root`` (default: ``imgs`` beside the json). ``languages`` keeps only those
    ``q_lang`` values (None keeps all); the converter reports how many were left out.
    """
    src = Path(src)
    root = _image_root(src, images_root, ("imgs", "images"))
    records = []
    for i, row in enumerate(read_json_list(src)):
        lang = row.get("q_lang")
        if languages is not None and lang not in languages:
            continue
        name = str(need(row, ("img_name", "image"), src, i))
        answer = str(need(row, ("answer",), src, i))
        records.append(
            make_record(
                str(need(row, ("question",), src, i)),
                answer,
                images=[local_image(root, name, src, i, "img_name")],
                task=vqa_task(answer, row.get("answer_type")),
                modality=norm_modality(row.get("modality")),
                meta={"source": "slake", "qid": row.get("qid"), "lang": lang, "location": row.get("location")},
                path=src,
                row=i,
            )
        )
    return records


def load_pathvqa(src: str | Path, *, images_root: str | Path | None = None, image_dir: str | Path | None = None) -> list[Record]:
    """PathVQA in either published form.

    * json list ``{image: "train_0422", question, answer}`` (the qas release; ``img_id`` also accepted),
      images ``<image>.jpg`` under ``images_root`` (default: ``images`` beside the json);
    * parquet (the Hugging Face release) with columns ``image`` ({bytes, path} struct or bytes),
      ``question``, ``answer``; images are written as PNG under ``image_dir``.
    Yes/no answers are closed questions, everything else open (PathVQA has no answer_type).
    """
    src = Path(src)
    records = []
    if src.suffix.lower() == ".parquet":
        if image_dir is None:
            raise SourceError(src, "images are embedded in the parquet file: pass image_dir to write them")
        for i, row in enumerate(read_table(src)):
            data = image_bytes(need(row, ("image",), src, i), src, i, "image")
            img = save_image_bytes(data, Path(image_dir) / f"pathvqa_{src.stem}_{i:06d}", src, i, "image")
            answer = str(need(row, ("answer",), src, i))
            records.append(
                make_record(str(need(row, ("question",), src, i)), answer, images=[str(img)], task=vqa_task(answer, None),
                            modality="pathology", meta={"source": "pathvqa", "row": i}, path=src, row=i)
            )
        return records
    root = _image_root(src, images_root, ("images",))
    for i, row in enumerate(read_json_list(src)):
        name = str(need(row, ("image", "img_id"), src, i))
        answer = str(need(row, ("answer",), src, i))
        records.append(
            make_record(
                str(need(row, ("question",), src, i)),
                answer,
                images=[local_image(root, name, src, i, "image", extensions=(".jpg", ".png"))],
                task=vqa_task(answer, None),
                modality="pathology",
                meta={"source": "pathvqa", "image_id": name},
                path=src,
                row=i,
            )
        )
    return records


CHOICE_COLUMNS = ("Choice A", "Choice B", "Choice C", "Choice D")


def _strip_choice(letter: str, text: str) -> str:
    """PMC-VQA writes choices as 'A:CT scan' (sometimes ' A: CT scan '): drop the letter prefix."""
    t = text.strip()
    for sep in (":", ".", ")"):
        if t[:2].upper() == f"{letter}{sep}":
            return t[2:].strip()
    return t


def load_pmc_vqa(src: str | Path, *, images_root: str | Path | None = None) -> list[Record]:
    """PMC-VQA ``train.csv``/``test.csv``: ``Figure_path, Question, Choice A..D, Answer`` (+ ``Answer_label``).

    The answer is the option letter. ``Answer_label`` (a letter) wins when present; else ``Answer``
    may be a letter, 'B:text', or the choice text itself. The record asks with the four options and
    the assistant answers with the letter (closed question); choices go to meta.
    """
    src = Path(src)
    root = _image_root(src, images_root, ("figures", "images"))
    records = []
    for i, row in enumerate(read_table(src), start=2):  # row 1 is the CSV header
        fig = str(need(row, ("Figure_path", "figure_path"), src, i))
        question = str(need(row, ("Question",), src, i))
        choices = {}
        for col in CHOICE_COLUMNS:
            letter = col[-1]
            if row.get(col) not in (None, ""):
                choices[letter] = _strip_choice(letter, str(row[col]))
        if len(choices) < 2:
            raise SourceError(src, "needs at least two of 'Choice A'..'Choice D'", row=i, field="Choice A")
        letter = _answer_letter(row, choices, src, i)
        prompt = question.strip() + "\n" + "\n".join(f"{k}: {v}" for k, v in choices.items()) + "\nAnswer with the option's letter."
        records.append(
            make_record(prompt, letter, images=[local_image(root, fig, src, i, "Figure_path")], task="vqa_closed", modality=None,
                        meta={"source": "pmc-vqa", "choices": choices, "answer_text": choices[letter]}, path=src, row=i)
        )
    return records


def _answer_letter(row: dict, choices: dict[str, str], src: Path, i: int) -> str:
    label = str(row.get("Answer_label") or "").strip().upper()
    if label in choices:
        return label
    ans = str(need(row, ("Answer",), src, i)).strip()
    if ans.upper() in choices:
        return ans.upper()
    if len(ans) > 1 and ans[0].upper() in choices and ans[1] in ":.)":
        return ans[0].upper()
    for k, v in choices.items():
        if v.strip().lower() == ans.lower():
            return k
    raise SourceError(src, f"answer {ans!r} matches none of the choices {sorted(choices)}", row=i, field="Answer")

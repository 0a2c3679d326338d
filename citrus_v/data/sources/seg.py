"""Segmentation sets: MeCoVQA-G(-Plus) conversations and MedSegBench arrays."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from citrus_v.data.schema import IMAGE_PLACEHOLDER, SEG_TOKEN, Message, Record, RecordError
from citrus_v.data.sources.common import SourceError, local_image, need, norm_modality, read_json_list, save_array_png

# "<SEG><mask>masks/x.png</mask>", "<SEG>" alone, or "[SEG]" alone; the mask path is optional
_SEG_RE = re.compile(r"(?:<SEG>|\[SEG\])(?:\s*<mask>(.*?)</mask>)?")
_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def load_mecovqa_g(src: str | Path, *, images_root: str | Path | None = None) -> list[Record]:
    """MeCoVQA-G / MeCoVQA-G-Plus (MedPLIB): a json list (or JSON lines) of
    ``{id, image, conversations: [{from: human|gpt, value}], modality?, mask?/masks?}``.

    Each ``<SEG><mask>path</mask>`` in an answer becomes ``[SEG]`` and ``path`` the next mask;
    a bare ``<SEG>`` takes the next path of the item's ``mask``/``masks`` field. Image and mask
    paths resolve against ``images_root`` (default: the json's folder). ``<image>`` followed by a
    newline in the first human turn is kept as the placeholder; ``meta["query"]`` keeps that turn as
    written, the prompt the published evaluation sends (``citrus-v eval --protocol mecovqa-g``).
    """
    src = Path(src)
    root = Path(images_root) if images_root is not None else src.parent
    records = []
    for i, row in enumerate(read_json_list(src)):
        image = str(need(row, ("image", "image_path"), src, i))
        convs = need(row, ("conversations",), src, i)
        if not isinstance(convs, list):
            raise SourceError(src, "must be a list of {from, value}", row=i, field="conversations")
        spare = row.get("masks", row.get("mask", []))
        spare = [spare] if isinstance(spare, str) else list(spare or [])
        masks: list[str] = []
        messages = []
        for t, turn in enumerate(convs):
            if not isinstance(turn, dict) or turn.get("from") not in _ROLE or not isinstance(turn.get("value"), str):
                raise SourceError(src, "each turn needs 'from' (human/gpt) and a string 'value'", row=i, field=f"conversations[{t}]")
            role = _ROLE[turn["from"]]
            text = turn["value"]
            if role == "assistant":
                text = _seg_to_token(text, masks, spare, src, i, t)
            messages.append(Message(role, text.replace(IMAGE_PLACEHOLDER + "\n", IMAGE_PLACEHOLDER)))
        if not any(IMAGE_PLACEHOLDER in m.content for m in messages):
            first_user = next((k for k, m in enumerate(messages) if m.role == "user"), 0)
            messages[first_user] = Message(messages[first_user].role, IMAGE_PLACEHOLDER + messages[first_user].content)
        try:
            records.append(
                Record(
                    messages=messages,
                    images=[local_image(root, image, src, i, "image")],
                    masks=[local_image(root, m, src, i, "mask") for m in masks],
                    task="segmentation" if masks else "vqa_open",
                    modality=norm_modality(row.get("modality")),
                    meta={"source": "mecovqa-g", "id": row.get("id"), "query": _first_human(convs)},
                )
            )
        except RecordError as err:
            raise SourceError(src, err.problem, row=i, field=err.field) from None
    return records


def _first_human(convs: list) -> str | None:
    return next((t["value"] for t in convs if t.get("from") == "human"), None)


def _seg_to_token(text: str, masks: list[str], spare: list[str], src: Path, i: int, t: int) -> str:
    def repl(m: re.Match) -> str:
        if m.group(1):
            masks.append(m.group(1).strip())
        elif spare:
            masks.append(spare.pop(0))
        else:
            raise SourceError(src, "a <SEG> has no <mask>path</mask> and the item lists no spare mask", row=i, field=f"conversations[{t}]")
        return SEG_TOKEN

    return _SEG_RE.sub(repl, text)


SPLITS = ("train", "val", "test")


def _medsegbench_arrays(data: Any, src: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(split, images, labels) from either layout: ``<split>_images``/``<split>_label(s)`` or ``images``/``masks``."""
    keys = set(data.files)
    out = []
    for split in SPLITS:
        img_key = f"{split}_images"
        lab_key = next((k for k in (f"{split}_label", f"{split}_labels", f"{split}_masks") if k in keys), None)
        if img_key in keys:
            if lab_key is None:
                raise SourceError(src, f"has '{img_key}' but no '{split}_label'", field=img_key)
            out.append((split, data[img_key], data[lab_key]))
    if "images" in keys and "masks" in keys:
        out.append(("all", data["images"], data["masks"]))
    if not out:
        raise SourceError(src, f"no '<split>_images'/'<split>_label' or 'images'/'masks' arrays (found {sorted(keys)})")
    return out


def load_medsegbench(
    src: str | Path,
    *,
    image_dir: str | Path,
    label_names: dict[int, str] | None = None,
    modality: str | None = None,
) -> list[Record]:
    """MedSegBench ``.npz``: ``train_images`` (N,H,W[,3]) + ``train_label`` (N,H,W) integer classes
    (also ``val_``/``test_``), or the ``images``/``masks``/``metadata`` layout of DESIGN §4, where
    ``metadata`` is a JSON string with optional ``modality`` and ``labels`` ({value: name}).

    One record per (image, class present): "Please segment the <name>." -> "Sure, it is [SEG]."
    Images and binary masks are written as PNG under ``image_dir``. Class names come from
    ``label_names``, then metadata, else 'target' for a binary set and 'class <k>' otherwise.
    """
    src = Path(src)
    try:
        data = np.load(src, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise SourceError(src, f"unreadable npz ({err})") from None
    names: dict[int, str] = {}
    if "metadata" in data.files:
        try:
            meta = json.loads(str(data["metadata"]))
        except json.JSONDecodeError as err:
            raise SourceError(src, f"metadata is not a JSON string ({err.msg})", field="metadata") from None
        modality = modality or meta.get("modality")
        names = {int(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    names.update(label_names or {})
    image_dir = Path(image_dir)
    records = []
    for split, images, labels in _medsegbench_arrays(data, src):
        if images.shape[0] != labels.shape[0] or images.shape[1:3] != labels.shape[1:3]:
            raise SourceError(src, f"{split}: images {images.shape} and labels {labels.shape} disagree", field=f"{split}_label")
        if labels.ndim == 4 and labels.shape[-1] == 1:
            labels = labels[..., 0]  # (N, H, W, 1) -> (N, H, W)
        classes = sorted(int(c) for c in np.unique(labels) if c != 0)
        for n in range(images.shape[0]):
            img_path = save_array_png(images[n], image_dir / f"{src.stem}_{split}_{n:05d}.png")
            for c in np.unique(labels[n]):
                if c == 0:
                    continue
                c = int(c)
                name = names.get(c, "target" if classes == [1] or len(classes) == 1 else f"class {c}")
                mask_path = save_array_png((labels[n] == c).astype(np.uint8) * 255, image_dir / f"{src.stem}_{split}_{n:05d}_c{c}.png")
                records.append(
                    Record(
                        messages=[Message("user", f"{IMAGE_PLACEHOLDER}Please segment the {name}."), Message("assistant", f"Sure, it is {SEG_TOKEN}.")],
                        images=[str(img_path)],
                        masks=[str(mask_path)],
                        task="segmentation",
                        modality=norm_modality(modality),
                        meta={"source": "medsegbench", "split": split, "index": n, "label": c},
                    )
                )
    return records

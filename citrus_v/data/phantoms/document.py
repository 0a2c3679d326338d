"""Rendered lab-report pages with question answering on their values.

A page shows a title, a patient id and four analyte rows ("Hemoglobin  13.2 g/dL") in large
type so the digits survive 224 px and 28-px patches; some pages are rotated 90/180/270
degrees (as scanned documents are). The answer is the value with its unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..schema import IMAGE_PLACEHOLDER, Message

DOC_Q = "What is the {analyte} value?"
ROTATIONS = (0, 90, 180, 270)


@dataclass(frozen=True)
class Analyte:
    name: str
    unit: str
    low: float
    high: float
    decimals: int


# order on the page is fixed (a subset is shown), which a small model can exploit to find rows
ANALYTES = (
    Analyte("hemoglobin", "g/dL", 8.0, 17.9, 1),
    Analyte("WBC", "10^9/L", 2.0, 15.9, 1),
    Analyte("platelets", "10^9/L", 100, 450, 0),
    Analyte("glucose", "mg/dL", 60, 250, 0),
    Analyte("sodium", "mmol/L", 128, 150, 0),
    Analyte("potassium", "mmol/L", 3.0, 5.9, 1),
    Analyte("creatinine", "mg/dL", 0.5, 3.9, 1),
)
ROWS = 4


@lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.FreeTypeFont:
    # Pillow's bundled font: identical glyphs on every machine, so pages are byte-stable
    return ImageFont.load_default(size=px)


@dataclass
class Document:
    image: np.ndarray  # (S, S, 3) uint8
    values: dict[str, str]  # analyte -> "13.2 g/dL"
    rotation: int
    lines: list[tuple[tuple[int, int], str, int]] = field(default_factory=list)  # ((x, y), text, font px) as drawn, before rotation


def render(rng: np.random.Generator, size: int, rotate_prob: float = 0.25) -> Document:
    chosen = sorted(rng.choice(len(ANALYTES), ROWS, replace=False).tolist())
    values: dict[str, str] = {}
    for i in chosen:
        a = ANALYTES[i]
        v = rng.uniform(a.low, a.high)
        values[a.name] = f"{v:.{a.decimals}f} {a.unit}"
    paper = int(rng.integers(236, 256))
    page = Image.new("L", (size, size), paper)
    draw = ImageDraw.Draw(page)
    title_px, body_px = max(8, round(size * 0.07)), max(8, round(size * 0.068))
    lines: list[tuple[tuple[int, int], str, int]] = []

    def put(xy: tuple[int, int], text: str, px: int, fill: int) -> None:  # draw, and remember it for glyph_labels
        draw.text(xy, text, fill=fill, font=_font(px))
        lines.append((xy, text, px))

    ink = int(rng.integers(0, 40))
    m = round(size * 0.05)
    put((m, m), "LAB REPORT", title_px, ink)
    put((m, round(size * 0.16)), f"ID {int(rng.integers(1000, 9999))}", body_px, ink + 60)
    y0, dy = round(size * 0.32), round(size * 0.155)
    draw.line([(m, y0 - dy * 0.25), (size - m, y0 - dy * 0.25)], fill=ink + 80, width=max(1, size // 112))
    for r, name in enumerate(values):
        y = y0 + r * dy
        put((m, y), name.capitalize() if name[0].islower() else name, body_px, ink)
        put((round(size * 0.5), y), values[name], body_px, ink)
    rotation = int(rng.choice(ROTATIONS[1:])) if rng.random() < rotate_prob else 0
    if rotation:
        page = page.rotate(rotation)  # square page: a lossless quarter turn, counter-clockwise
    arr = np.asarray(page.convert("RGB"))
    return Document(arr, values, rotation, lines)


def glyph_labels(doc: Document, charset: str) -> np.ndarray:
    """(S, S) int16 map of the page as rendered: 1 + the index in ``charset`` of the character whose
    glyph covers the pixel, 0 elsewhere (characters outside ``charset`` are left out). For dense
    reading targets (the reading probes of docs/default_model.md, Documents); character positions follow the font's advance
    widths, so they match ``render`` to within kerning."""
    size = doc.image.shape[0]
    labels = np.zeros((size, size), dtype=np.int16)
    for (x, y), text, px in doc.lines:
        font = _font(px)
        for i, ch in enumerate(text):
            if ch not in charset:
                continue
            glyph = Image.new("L", (size, size), 0)
            ImageDraw.Draw(glyph).text((x + font.getlength(text[:i]), y), ch, fill=255, font=font)
            labels[np.asarray(glyph) >= 128] = charset.index(ch) + 1
    if doc.rotation:  # the same counter-clockwise quarter turns as the page
        labels = np.rot90(labels, k=doc.rotation // 90).copy()
    return labels


def patch_characters(labels: np.ndarray, n_chars: int, patch: int, merge: int, min_pixels: int = 3) -> np.ndarray:
    """A ``glyph_labels`` map (S, S) -> (T, merge * merge, n_chars) float32: which characters have at least
    ``min_pixels`` pixels of ink in each ViT patch of each merged token, tokens and their patches in the
    merger's row-major order (the reading probes of docs/default_model.md, Documents)."""
    g = labels.shape[0] // patch
    onehot = np.stack([labels == k + 1 for k in range(n_chars)], axis=-1)  # (S, S, C)
    counts = onehot[: g * patch, : g * patch].reshape(g, patch, g, patch, n_chars).sum(axis=(1, 3))  # (g, g, C)
    present = (counts >= min_pixels).astype(np.float32)
    t = g // merge
    return present.reshape(t, merge, t, merge, n_chars).transpose(0, 2, 1, 3, 4).reshape(t * t, merge * merge, n_chars)


def character_centres(doc: Document) -> list[list[tuple[float, float]]]:
    """For each line of ``doc.lines``, the centre (x, y in page pixels, after the page's quarter turn) of
    each of its characters: the middle of the character's advance, on the line's height (a '.' sits low in
    its own box but on its digits' line)."""
    size = doc.image.shape[0]
    turn = {0: lambda x, y: (x, y), 90: lambda x, y: (y, size - x),  # counter-clockwise, as the page
            180: lambda x, y: (size - x, size - y), 270: lambda x, y: (size - y, x)}[doc.rotation]
    out = []
    for (x, y), text, px in doc.lines:
        font = _font(px)
        _, top, _, bottom = font.getbbox(text)
        centres = []
        for i, ch in enumerate(text):
            left, _, right, _ = font.getbbox(ch)
            centres.append(turn(x + font.getlength(text[:i]) + (left + right) / 2, y + (top + bottom) / 2))
        out.append(centres)
    return out


def character_tokens(doc: Document, token: int) -> list[list[int]]:
    """For each line of ``doc.lines``, the ``token``-pixel square (row-major index, as the merger orders its
    tokens) that holds the centre (``character_centres``) of each of its characters."""
    t = doc.image.shape[0] // token
    return [[min(int(cy // token), t - 1) * t + min(int(cx // token), t - 1) for cx, cy in line]
            for line in character_centres(doc)]


Centres = list[list[tuple[float, float]]]


def _rounded(points) -> list[list[float]]:
    return [[round(float(x), 1), round(float(y), 1)] for x, y in points]


def copy_points(doc: Document, answer: str, centres: Centres | None = None) -> list[list[float]]:
    """Where the page shows what ``answer`` (a value line, "13.7 g/dL") copies from it: the centre
    (``character_centres``, rounded to 0.1 px) of each character of its number ("13.7"), in order. Written
    to a record's ``meta["copy_points"]`` for the copy-attention target (docs/training.md). ``centres``:
    the page's ``character_centres``, when the caller has them already."""
    texts = [text for _, text, _ in doc.lines]
    if answer not in texts[2:]:
        raise ValueError(f"{answer!r} is not a value line of the page")
    line = (character_centres(doc) if centres is None else centres)[texts.index(answer, 2)]
    return _rounded(line[: len(answer.split(" ")[0])])


def reading_lines(doc: Document, centres: Centres | None = None) -> list[dict]:
    """The page's text for the token-reading target (``meta["reading"]``, docs/training.md): each line of
    ``doc.lines`` in reading order with the centre (``character_centres``, rounded to 0.1 px) of each of its
    characters."""
    centres = character_centres(doc) if centres is None else centres
    return [{"text": text, "points": _rounded(line)} for (_, text, _), line in zip(doc.lines, centres)]


def value_conversation(doc: Document, order: Sequence[int], image: bool = True,
                       centres: Centres | None = None) -> tuple[list[Message], list[list[list[float]]]]:
    """One conversation asking the page's values in ``order`` (indices into ``doc.values``), the image
    placeholder before the first question when ``image``; and each answer's ``copy_points`` (one list per
    assistant turn, as ``meta["copy_points"]`` holds them)."""
    names = list(doc.values)
    centres = character_centres(doc) if centres is None else centres  # once for the page, not once per answer
    messages: list[Message] = []
    points = []
    for k in order:
        first = IMAGE_PLACEHOLDER if image and not messages else ""
        messages += [Message("user", first + DOC_Q.format(analyte=names[k])), Message("assistant", doc.values[names[k]])]
        points.append(copy_points(doc, doc.values[names[k]], centres))
    return messages, points


def token_characters(doc: Document, charset: str, token: int, slots: int = 4) -> np.ndarray:
    """(T, slots) int64 reading targets, one row per ``token``-pixel square of the page (row-major, as the
    merger orders its tokens): 1 + the ``charset`` index of each character whose centre
    (``character_tokens``) falls in the square, in the text's reading order (line, then place in the line),
    0 for an empty slot; characters past ``slots`` in one square are dropped. Centres follow the page's
    quarter turn, so the order is the text's, not the image's."""
    t = doc.image.shape[0] // token
    out = np.zeros((t * t, slots), np.int64)
    filled = np.zeros(t * t, np.int64)
    for (_, text, _), squares in zip(doc.lines, character_tokens(doc, token)):
        for ch, k in zip(text, squares):
            if ch in charset and filled[k] < slots:
                out[k, filled[k]] = charset.index(ch) + 1
                filled[k] += 1
    return out


def question(doc: Document, rng: np.random.Generator) -> tuple[str, str, str]:
    """(question, answer, analyte) about one row of the page."""
    names = list(doc.values)
    name = names[int(rng.integers(len(names)))]
    return DOC_Q.format(analyte=name), doc.values[name], name

"""Rendered lab-report pages with question answering on their values.

A page shows a title, a patient id and four analyte rows ("Hemoglobin  13.2 g/dL") in large
type so the digits survive 224 px and 28-px patches; some pages are rotated 90/180/270
degrees (as scanned documents are). The answer is the value with its unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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
    title, body = _font(max(8, round(size * 0.07))), _font(max(8, round(size * 0.068)))
    ink = int(rng.integers(0, 40))
    m = round(size * 0.05)
    draw.text((m, m), "LAB REPORT", fill=ink, font=title)
    draw.text((m, round(size * 0.16)), f"ID {int(rng.integers(1000, 9999))}", fill=ink + 60, font=body)
    y0, dy = round(size * 0.32), round(size * 0.155)
    draw.line([(m, y0 - dy * 0.25), (size - m, y0 - dy * 0.25)], fill=ink + 80, width=max(1, size // 112))
    for r, name in enumerate(values):
        y = y0 + r * dy
        label = name.capitalize() if name[0].islower() else name
        draw.text((m, y), label, fill=ink, font=body)
        draw.text((round(size * 0.5), y), values[name], fill=ink, font=body)
    rotation = int(rng.choice(ROTATIONS[1:])) if rng.random() < rotate_prob else 0
    if rotation:
        page = page.rotate(rotation)  # square page: a lossless quarter turn, counter-clockwise
    arr = np.asarray(page.convert("RGB"))
    return Document(arr, values, rotation)


def question(doc: Document, rng: np.random.Generator) -> tuple[str, str, str]:
    """(question, answer, analyte) about one row of the page."""
    names = list(doc.values)
    name = names[int(rng.integers(len(names)))]
    return DOC_Q.format(analyte=name), doc.values[name], name

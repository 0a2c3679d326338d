"""The README picture from the demo's overlays: run `bash scripts/demo.sh` first, then
`python scripts/readme_picture.py` writes docs/images/demo_overlays.png (seven panels side by side,
each scaled to 300 px high: the real CT's liver, the real chest X-ray's lungs, the phantom's liver,
lesion mask and lesion box, and the real fundus photograph's vessels given whole and in tiles).
`side_by_side` is also what scripts/readme_real_picture.py lays its real-image grid out with."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PANELS = ("ct_liver", "cxr_lungs", "phantom_liver", "phantom_segment", "phantom_detect", "fundus_whole", "fundus_tiled")
HEIGHT, GAP = 300, 8


def side_by_side(images: Sequence[Image.Image], height: int = HEIGHT, gap: int = GAP) -> Image.Image:
    """The images left to right on white, each scaled (aspect kept) to ``height`` px, ``gap`` px apart."""
    scaled = [im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height), Image.BILINEAR)
              if im.height != height else im.convert("RGB") for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in scaled) + gap * (len(scaled) - 1), height), "white")
    x = 0
    for im in scaled:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas


def save_picture(picture: Image.Image, out: Path) -> int:
    """Write ``picture`` to ``out`` (its folder made), say so; 0 for ``main`` to return."""
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    print(f"wrote {out} ({picture.width} x {picture.height})")
    return 0


def main(demo_dir: Path = ROOT / "out" / "demo", out: Path = ROOT / "docs" / "images" / "demo_overlays.png") -> int:
    images = []
    for name in PANELS:
        path = demo_dir / name / "overlay.png"
        if not path.is_file():
            raise SystemExit(f"readme_picture: {path} is missing; run `bash scripts/demo.sh` first")
        images.append(Image.open(path))
    return save_picture(side_by_side(images), out)


if __name__ == "__main__":
    sys.exit(main(*(Path(a) for a in sys.argv[1:3])))

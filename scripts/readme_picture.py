"""The README picture from the demo's overlays: run `bash scripts/demo.sh` first, then
`python scripts/readme_picture.py` writes docs/images/demo_overlays.png (four panels side by side,
each scaled to 300 px high: the real CT's liver, the phantom's liver, lesion mask and lesion box)."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PANELS = ("ct_liver", "phantom_liver", "phantom_segment", "phantom_detect")
HEIGHT, GAP = 300, 8


def main(demo_dir: Path = ROOT / "out" / "demo", out: Path = ROOT / "docs" / "images" / "demo_overlays.png") -> int:
    images = []
    for name in PANELS:
        path = demo_dir / name / "overlay.png"
        if not path.is_file():
            raise SystemExit(f"readme_picture: {path} is missing; run `bash scripts/demo.sh` first")
        im = Image.open(path).convert("RGB")
        images.append(im.resize((round(im.width * HEIGHT / im.height), HEIGHT), Image.BILINEAR))
    canvas = Image.new("RGB", (sum(im.width for im in images) + GAP * (len(images) - 1), HEIGHT), "white")
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + GAP
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    print(f"wrote {out} ({canvas.width} x {canvas.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*(Path(a) for a in sys.argv[1:3])))

"""What box tightening costs: one detection request on the bundled phantom with the embedded default,
with and without it, 2 torch threads, best of 5 (two alternating rounds each, best kept).

    python benchmarks/time_box_tightening.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from citrus_v.infer.predictor import Predictor

PHANTOM = Path(__file__).resolve().parents[1] / "citrus_v" / "assets" / "examples" / "phantom_ct_lesion.png"
PROMPT = "Please locate the lesion."


def main() -> int:
    torch.set_num_threads(2)
    image = np.asarray(Image.open(PHANTOM).convert("RGB"))
    predictor = Predictor.from_pretrained(None)
    best = {"as_written_s": float("inf"), "tightened_s": float("inf")}
    for tighten in (False, True, False, True):
        predictor.tighten_boxes = tighten
        key = "tightened_s" if tighten else "as_written_s"
        for _ in range(5):
            start = time.perf_counter()
            pred = predictor.predict([image], PROMPT)
            best[key] = min(best[key], time.perf_counter() - start)
        box = pred.boxes[0]
        print(f"tighten={tighten}: best {best[key]:.3f} s; box {box.bbox} (written {box.text_bbox})")
    print(json.dumps({k: round(v, 3) for k, v in best.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

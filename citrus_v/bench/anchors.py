"""Reading the shared anchor scripts' output (``../shared/bench/hf_*.py``) in the GPU scripts.

Each anchor prints its figures as one JSON line, last; ``scripts/bench_gpu.sh`` and
``scripts/gpu_stage3d.sh`` log every anchor to ``NAME.log`` and gather those lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def last_json(log: Path) -> dict[str, Any]:
    """The last line of ``log`` that starts a JSON object, parsed; when there is none (the anchor
    failed or was stopped by its timeout), ``{"error": <the log's last 1500 characters>}``."""
    text = log.read_text() if log.exists() else ""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": text[-1500:] if log.exists() else "no log"}

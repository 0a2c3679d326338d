"""Reading the reference anchor scripts' output (``hf_*.py``, kept outside this repository) on a GPU.

Each anchor prints its figures as one JSON line, last; a GPU session logs every anchor to ``NAME.log``
and gathers those lines (``call_record``) beside citrus-v's own figures (docs/speed.md).
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


def call_record(out: Path, command: str) -> dict[str, Any]:
    """The head of a GPU call's result file: the command, the commit it ran, the GPU (``out/gpu.txt``,
    written by nvidia-smi) and both anchors' figures (``out/hf_baseline.log``, ``out/hf_compiled.log``)."""
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    gpu = out / "gpu.txt"
    return {"command": command, "commit": commit or None, "gpu": gpu.read_text().strip() if gpu.exists() else None,
            "hf_baseline": last_json(out / "hf_baseline.log"), "hf_compiled": last_json(out / "hf_compiled.log")}

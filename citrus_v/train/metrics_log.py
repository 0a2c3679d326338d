"""Per-step metrics as JSON lines, and the loss-curve PNG written at the end of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from citrus_v.data.schema import read_json_lines


class MetricsLog:
    """Appends one JSON object per optimizer step to ``path``.

    On resume from step k, lines for steps > k (written before the crash and about to be
    redone) are dropped, so the log has each step once.
    """

    def __init__(self, path: str | Path, *, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("", encoding="utf-8")
        elif self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [row for _, row in read_json_lines(path, "metrics log")]


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, *, title: str = "") -> Path:
    """Loss (and lr on a second axis) per optimizer step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not rows:
        raise ValueError(f"{metrics_path}: no rows with a 'loss' to plot")
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, [r["loss"] for r in rows], label="loss", color="tab:blue")
    if all("lm_loss" in r for r in rows) and any(r.get("mask_loss", 0) for r in rows):
        ax.plot(steps, [r["lm_loss"] for r in rows], label="LM loss", color="tab:green", alpha=0.7)
        ax.plot(steps, [r["mask_loss"] for r in rows], label="mask loss", color="tab:red", alpha=0.7)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    if all("lr" in r for r in rows):
        ax2 = ax.twinx()
        ax2.plot(steps, [r["lr"] for r in rows], color="tab:gray", linestyle="--", linewidth=1)
        ax2.set_ylabel("learning rate", color="tab:gray")
    ax.set_title(title or Path(metrics_path).parent.name)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path)
    plt.close(fig)
    return png_path

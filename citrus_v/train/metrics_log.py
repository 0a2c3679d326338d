"""Per-step metrics as JSON lines, and the loss-curve PNG written at the end of a run.

``--report-to tensorboard`` / ``wandb`` send the same rows, as scalars named ``train/<field>`` at
the row's optimizer step, to TensorBoard (an event file under ``<out>/tensorboard``, written by
``torch.utils.tensorboard``, which needs the ``tensorboard`` package: ``pip install
'citrus-v[tensorboard]'``) and to Weights & Biases (``wandb``, when installed; its own settings,
e.g. ``WANDB_MODE=offline``, apply). The JSON-lines file stays the record of the run.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Sequence

from citrus_v.data.schema import read_json_lines
from citrus_v.errors import UserError

# --report-to name -> (the module it needs, how to install it)
REPORTERS = {
    "tensorboard": ("tensorboard", "pip install 'citrus-v[tensorboard]'"),
    "wandb": ("wandb", "pip install wandb"),
}
# row fields that say where a row is, not what was measured
NOT_SCALARS = ("step", "stage", "epoch")


def check_report_to(names: Sequence[str]) -> tuple[str, ...]:
    """The reporters ``names`` asks for (``none`` = only the JSON lines), each checked to be importable
    before a run starts; an unknown one or a missing package is a one-line UserError."""
    chosen = tuple(dict.fromkeys(n for n in names if n != "none"))
    for name in chosen:
        if name not in REPORTERS:
            raise UserError(f"--report-to {name}: unknown; choose from {', '.join(['none', *REPORTERS])}")
        module, install = REPORTERS[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"--report-to {name}: the {module} package is not installed ({install})")
    return chosen


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The row's measured numbers (not its step, stage or epoch; not booleans)."""
    return {k: float(v) for k, v in record.items()
            if k not in NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}


class _TensorBoard:
    def __init__(self, log_dir: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run hides the steps after its checkpoint that the crashed run had written
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, out_dir: Path, resume_step: int | None) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project="citrus-v", name=out_dir.name, dir=str(out_dir), resume="allow" if resume_step else None)

    def write(self, step: int, values: dict[str, float]) -> None:
        self.run.log({f"train/{k}": v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class MetricsLog:
    """Appends one JSON object per optimizer step to ``path``, and sends its numbers to the
    ``report_to`` reporters (see the module docstring).

    On resume from step k, lines for steps > k (written before the crash and about to be
    redone) are dropped, so the log has each step once.
    """

    def __init__(self, path: str | Path, *, resume_step: int | None = None, report_to: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("", encoding="utf-8")
        elif self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        out_dir = self.path.parent
        self.reporters: list[Any] = []
        for name in check_report_to(report_to):
            self.reporters.append(_TensorBoard(out_dir / "tensorboard", resume_step) if name == "tensorboard"
                                  else _WandB(out_dir, resume_step))

    @property
    def tensorboard_dir(self) -> Path:
        return self.path.parent / "tensorboard"

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        values = scalars(record)
        for reporter in self.reporters:
            reporter.write(int(record.get("step", 0)), values)

    def close(self) -> None:
        """Flush and close the reporters (the JSON lines are written row by row)."""
        for reporter in self.reporters:
            reporter.close()
        self.reporters = []


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

"""``citrus-v train --report-to tensorboard`` (issue 23 point 8): the event file holds the rows of
metrics.jsonl; a reporter whose package is missing is one line before any work."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from citrus_v.cli import main
from citrus_v.errors import UserError
from citrus_v.train.metrics_log import MetricsLog, check_report_to, scalars

tensorboard = pytest.importorskip("tensorboard", reason="the tensorboard extra: pip install 'citrus-v[tensorboard]'")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _events(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] read back from the event files under ``log_dir``."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_report_to_tensorboard_logs_the_rows_of_the_metrics_file(tmp_path):
    from citrus_v.data.phantoms import generate_suite

    files = generate_suite(tmp_path / "suite", 4, n_val=0, n_test=0, size=112, tasks=["segmentation"], progress=False)
    out = tmp_path / "run"
    assert main(["train", "--stage", "4", "--data", str(files["train"]), "--steps", "3", "--out", str(out),
                 "--no-progress", "--report-to", "tensorboard"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and (out / "loss_curve.png").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    events = _events(out / "tensorboard")
    for name in ("loss", "mask_loss", "lr", "grad_norm"):
        logged = events[f"train/{name}"]
        assert [s for s, _ in logged] == [1, 2, 3]
        # event files hold float32
        assert [v for _, v in logged] == pytest.approx([r[name] for r in rows], rel=1e-6, abs=1e-12)
    assert "train/step" not in events and "train/stage" not in events


def test_a_resumed_log_hides_the_steps_it_redoes(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", report_to=["tensorboard"])
    for step in (1, 2, 3):
        log.write({"step": step, "loss": float(step)})
    log.close()
    log = MetricsLog(tmp_path / "metrics.jsonl", resume_step=2, report_to=["tensorboard"])
    log.write({"step": 3, "loss": 30.0})
    log.close()
    assert _events(tmp_path / "tensorboard")["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_scalars_are_the_measured_numbers_only():
    row = {"stage": 4, "step": 7, "epoch": 0, "loss": 1.5, "samples": 28, "flag": True, "name": "x"}
    assert scalars(row) == {"loss": 1.5, "samples": 28.0}


def test_unknown_or_missing_reporters_are_one_line(monkeypatch):
    assert check_report_to(["none"]) == ()
    assert check_report_to(["tensorboard", "tensorboard"]) == ("tensorboard",)
    with pytest.raises(UserError, match="--report-to mlflow: unknown"):
        check_report_to(["mlflow"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match=r"--report-to wandb: the wandb package is not installed \(pip install wandb\)"):
        check_report_to(["wandb"])


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_cli_refuses_wandb_in_one_line_when_it_is_not_installed(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("")
    done = subprocess.run([sys.executable, "-m", "citrus_v.cli", "train", "--stage", "4", "--data", str(data),
                           "--steps", "1", "--out", str(tmp_path / "o"), "--report-to", "wandb"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == "citrus-v train: --report-to wandb: the wandb package is not installed (pip install wandb)"
    assert not (tmp_path / "o").exists()

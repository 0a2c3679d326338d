"""Kill a training run with SIGKILL mid-way, resume it, and get bit-identical final weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from citrus_v.train import checkpointing as ckpt

REPO = Path(__file__).resolve().parents[2]


def _run(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tests.train.run_tiny", str(out), *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    args = ("--steps", "6", "--save-every", "2")
    straight = _run(tmp_path / "straight", *args)
    killed = _run(tmp_path / "killed", *args, "--step-delay", "0.4")
    root = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while not (root / "step_000002").is_dir():
        assert killed.poll() is None, killed.stderr.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert ckpt.latest_checkpoint(root).name in ("step_000002", "step_000004")  # the run really stopped mid-way

    resumed = _run(tmp_path / "killed", *args, "--resume")
    out_r, err_r = resumed.communicate(timeout=180)
    out_s, err_s = straight.communicate(timeout=180)
    assert resumed.returncode == 0, err_r
    assert straight.returncode == 0, err_s
    assert json.loads(out_r.splitlines()[-1])["steps"] == 6

    a = load_file(tmp_path / "straight" / "checkpoints" / "step_000006" / "model.safetensors")
    b = load_file(root / "step_000006" / "model.safetensors")
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert differing == []
    # the metrics log has each step once, in order, after the resume
    rows = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    straight_rows = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight_rows]


def test_resume_refuses_corrupt_newest_checkpoint(tmp_path):
    from citrus_v.train.recipe import train
    from citrus_v.train.stages import get_stage
    from tests.train.synthetic import collate, make_dataset, tiny_model

    stage = get_stage(4, "tiny").replace(max_steps=2, save_every=1, grad_accum=1, keep_last=None)
    train(stage, tiny_model(0), make_dataset(2), collate, tmp_path, progress=False)
    newest = tmp_path / "checkpoints" / "step_000002"
    (newest / "scheduler.json").write_text('{"last_epoch": 99}')
    with pytest.raises(ckpt.CheckpointError, match=r"step_000002/scheduler.json: size 18 bytes, manifest says \d+.*step_000001"):
        train(stage.replace(max_steps=3), tiny_model(0), make_dataset(2), collate, tmp_path, resume=True, progress=False)

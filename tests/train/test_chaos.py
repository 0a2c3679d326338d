"""Chaos: kill -9 a four-stage run at each phase of a checkpoint's save and of the final folder's,
resume it, and get the final weights of an uninterrupted run bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from citrus_v.train.checkpointing import SAVE_PHASES

REPO = Path(__file__).resolve().parents[2]
# the 3rd checkpoint of the run is stage 2's first step (two steps a stage); the 2nd final folder is stage 2's
NTH = {"checkpoint": 3, "final": 2}


def _run(out: Path, suite: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tests.train.run_chaos", str(out), "--suite", str(suite), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    from citrus_v.data.phantoms.suite import generate_suite

    root = tmp_path_factory.mktemp("chaos")
    suite = generate_suite(root / "suite", 12, n_val=0, n_test=0, seed=5, size=112, progress=False)["train"]
    done = _run(root / "straight", suite)
    assert done.returncode == 0, done.stderr[-2000:]
    return suite, load_file(root / "straight" / "stage4" / "final" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("phase", SAVE_PHASES)
def test_killed_at_each_save_phase_then_resumed_ends_bit_identical(phase, straight, tmp_path):
    suite, expected = straight
    out = tmp_path / "run"
    killed = _run(out, suite, "--kill-at", f"{phase}:{NTH[phase.split(':')[0]]}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]  # the kill landed where asked
    assert not (out / "stage4").exists()  # it stopped in stage 2
    assert not (out / "stage2" / "final" / "model.safetensors").exists() or phase == "final:renamed"

    resumed = _run(out, suite, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = load_file(out / "stage4" / "final" / "model.safetensors")
    assert got.keys() == expected.keys()
    assert [k for k in got if not torch.equal(got[k], expected[k])] == []
    assert not list(out.glob("stage*/final.partial")) and not list(out.glob("stage*/checkpoints/*.tmp"))

"""Test-wide settings: one thread (timings on 2 cores are erratic), fp32, no hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout (CI lays a copy there)."""
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: CI and the dev machines lay ../shared beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def totalseg_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "totalseg_example"

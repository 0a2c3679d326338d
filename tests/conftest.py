"""Test-wide settings: one thread (timings on 2 cores are erratic), fp32, no hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The published 8B checkpoint's config and tensor shapes (tests/fixtures/reference)."""
    return FIXTURES / "reference"


@pytest.fixture(scope="session")
def ct_series_dir() -> Path:
    """A real 20-slice DICOM CT series with its label NIfTI and labels.json (tests/fixtures/totalseg_example)."""
    return FIXTURES / "totalseg_example"


@pytest.fixture(scope="session")
def totalseg_dir() -> Path:
    """The CT and MR volumes the phantom suite mixes in, as the package ships them."""
    from citrus_v.data.phantoms.totalseg import default_dir

    return default_dir()

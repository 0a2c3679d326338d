"""One DICOM display rule: a file reaches the model byte-identically through the CLI reader and the server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from citrus_v.data.medical_io import load_image
from citrus_v.serve.errors import RequestError
from citrus_v.serve.images import decode_image_bytes
from citrus_v.serve.settings import ServeConfig


def sample(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.fail(f"pydicom test file {name} is not in the wheel")
    return Path(path)


def monochrome1_cr() -> Path:
    path = sample("CT_small.dcm").parent / "dicomdirtests" / "77654033" / "CR1" / "6154"
    if not path.is_file():
        pytest.fail("MONOCHROME1 CR sample not in this pydicom wheel")
    return path


@pytest.mark.parametrize(
    "path_of",
    [
        lambda: sample("CT_small.dcm"),  # CT with a file window -> window, HU
        lambda: sample("MR_small.dcm"),  # MR with a file window
        lambda: sample("examples_rgb_color.dcm"),  # RGB ultrasound
        lambda: sample("MR_small_jp2klossless.dcm"),  # JPEG 2000 through the installed decoder
        lambda: sample("examples_palette.dcm"),  # PALETTE COLOR, expanded to RGB
        monochrome1_cr,  # MONOCHROME1: inverted display
    ],
    ids=["ct", "mr", "rgb_us", "mr_j2k", "palette", "cr_monochrome1"],
)
def test_server_decoder_equals_cli_reader(path_of):
    path = path_of()
    cli = load_image(path)  # what `citrus-v predict IMAGE` feeds the model
    served = decode_image_bytes(path.read_bytes(), ServeConfig(), "image").pixels
    assert served.dtype == np.uint8 and served.shape == cli.shape and served.shape[2] == 3
    assert served.tobytes() == cli.tobytes()
    # the bytes path of load_image is the same reader too
    assert load_image(path.read_bytes()).tobytes() == cli.tobytes()


def test_ct_without_a_file_window_gets_the_soft_tissue_window():
    """The rule the old server lacked: CT without VOI/window is read at W400/L40, not by 1-99 percentile."""
    import pydicom

    from citrus_v.data.windowing import apply_window, percentile_scale

    ds = pydicom.dcmread(sample("CT_small.dcm"))
    assert "WindowCenter" not in ds and "VOILUTSequence" not in ds
    served = decode_image_bytes(sample("CT_small.dcm").read_bytes(), ServeConfig(), "image").pixels
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(served[..., 1], apply_window(hu, 40, 400))
    assert not np.array_equal(served[..., 1], percentile_scale(hu))  # what the server used to send


def test_dicom_errors_map_to_request_errors():
    no_decoder = sample("JPEG-lossy.dcm").read_bytes()  # a 12-bit JPEG extended stream no installed decoder reads
    with pytest.raises(RequestError) as info:
        decode_image_bytes(no_decoder, ServeConfig(), "messages[0].content[0].image_url.url")
    err = info.value
    assert (err.status, err.code, err.param) == (415, "unsupported_dicom", "messages[0].content[0].image_url.url")
    assert "unsupported DICOM transfer syntax 'JPEG Extended" in err.message
    with pytest.raises(RequestError) as info:
        decode_image_bytes(sample("rtplan.dcm").read_bytes(), ServeConfig(), "img")
    assert info.value.status == 415  # an RT plan: refused from the header as not an image
    truncated = sample("MR_truncated.dcm").read_bytes()
    with pytest.raises(RequestError) as info:
        decode_image_bytes(truncated, ServeConfig(), "img")
    assert (info.value.status, info.value.code) == (400, "corrupt_image") and "truncated" in info.value.message

"""The file's VOI LUT Function (LINEAR, LINEAR_EXACT, SIGMOID) is honoured, as pydicom computes it, and
``--window C,W`` reaches the reader from the command line (issue 23 point 4)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from citrus_v import cli
from citrus_v.data.dicom_io import read_dicom
from citrus_v.data.windowing import MedicalIOError, apply_window, parse_window


def with_function(tmp_path, function: str | None):
    """MR_small (window 600/1600, signed 16 bit) written again with ``function`` as its VOI LUT Function."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    if function is not None:
        ds.VOILUTFunction = function
    path = tmp_path / f"mr_{function}.dcm"
    ds.save_as(path)
    return path, pydicom.dcmread(path)


def pydicom_display(ds) -> np.ndarray:
    """pydicom's own VOI transform of the file, its output range (signed 16 bit here) mapped to 0..255."""
    assert int(ds.PixelRepresentation) == 1 and "RescaleSlope" not in ds  # the range below is for this file
    lo, hi = -(2 ** (int(ds.BitsStored) - 1)), 2 ** (int(ds.BitsStored) - 1) - 1
    y = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds).astype(np.float64), ds)
    return np.clip(np.rint((y - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("function", ["SIGMOID", "LINEAR_EXACT", "LINEAR"])
def test_the_file_voi_function_is_drawn_as_pydicom_computes_it(tmp_path, function):
    path, ds = with_function(tmp_path, function)
    img = read_dicom(path)
    assert img.voi_function == function and img.file_window == (600.0, 1600.0)
    np.testing.assert_array_equal(img.display()[..., 0], pydicom_display(ds))


def test_sigmoid_is_not_drawn_as_linear(tmp_path):
    sigmoid = read_dicom(with_function(tmp_path, "SIGMOID")[0]).display()[..., 0].astype(int)
    linear = read_dicom(with_function(tmp_path, None)[0]).display()[..., 0].astype(int)
    assert np.abs(sigmoid - linear).mean() > 2  # what the issue saw: SIGMOID drawn as LINEAR (5 grey levels here)
    np.testing.assert_array_equal(linear, apply_window(read_dicom(with_function(tmp_path, None)[0]).hu, 600, 1600))


def test_an_unknown_voi_function_is_refused_by_name(tmp_path):
    path, _ = with_function(tmp_path, "CUBIC")
    with pytest.raises(MedicalIOError, match="VOILUTFunction 'CUBIC'"):
        read_dicom(path)


def test_parse_window_takes_presets_percentile_and_center_width():
    assert parse_window("40,400") == (40.0, 400.0)
    assert parse_window(" -600 , 1500 ") == (-600.0, 1500.0)
    assert parse_window("ct_lung") == "ct_lung" and parse_window("percentile") == "percentile"
    for bad in ("40,0", "40,nan", "a,b", "40", "ct_lungs", "1,2,3"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_cli_window_center_width_reaches_the_reader(tmp_path, monkeypatch):
    from citrus_v.infer.predictor import Predictor

    seen = {}

    def fake_from_pretrained(cls, *args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)  # enough: the window was handed over

    monkeypatch.setattr(Predictor, "from_pretrained", classmethod(fake_from_pretrained))
    with pytest.raises(SystemExit):
        cli.main(["predict", "--image", get_testdata_file("CT_small.dcm"), "--prompt", "x", "--window", "40,400"])
    assert seen["window"] == (40.0, 400.0)


def test_cli_bad_window_is_one_line_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["predict", "--image", "x.dcm", "--prompt", "x", "--window", "40,0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--window" in err and "width >= 1" in err

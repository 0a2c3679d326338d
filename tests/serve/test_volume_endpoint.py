"""POST /v1/volumes/segment (issue 23 point 7): a NIfTI made here and the real CT series in
tests/fixtures/totalseg_example go through the volume pipeline; per-slice masks, measurements,
segmentation.nii.gz and (DICOM) a DICOM SEG come back; errors in the OpenAI shape; voxels charged."""

from __future__ import annotations

import base64
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from citrus_v.infer.types import Mask, Prediction
from citrus_v.serve.app import create_app
from citrus_v.serve.rle import decode_mask
from citrus_v.serve.settings import ServeConfig
from tests.serve.conftest import EchoPredictor, local_client

CT_SERIES = Path(__file__).resolve().parents[1] / "fixtures" / "totalseg_example" / "ct_dicom"


class BrightEcho(EchoPredictor):
    """One mask per slice: where the slice picture is brighter than mid-grey (so it follows the volume)."""

    def predict_batch(self, items, settings):
        self.calls.append(len(items))
        return [Prediction("Here is the liver [SEG].", "", masks=[Mask(images[0][..., 0] > 128, 0.9, "liver")])
                for images, _ in items]


def cube_nifti(path: Path) -> np.ndarray:
    """(32, 24, 6) volume, 0 outside a block that grows with the slice index (values 0 / 255)."""
    data = np.zeros((32, 24, 6), np.float32)
    for k in range(6):
        data[4 : 8 + 3 * k, 4 : 8 + 2 * k, k] = 255.0
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
    return data


def body_for(paths: list[Path], prompt: str = "Segment the liver.") -> dict:
    return {"prompt": prompt, "files": [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in paths]}


@pytest.fixture
def client():
    app = create_app(BrightEcho(), ServeConfig(max_batch=8, batch_wait_ms=1))
    with local_client(app) as c:
        yield c


def test_nifti_volume_masks_per_slice_and_files(client, tmp_path):
    data = cube_nifti(tmp_path / "cube.nii.gz")
    r = client.post("/v1/volumes/segment", json=body_for([tmp_path / "cube.nii.gz"]))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "volume.segmentation" and out["shape"] == [32, 24, 6] and out["names"] == ["liver"]
    assert len(out["slices"]) == 6
    areas = [int(decode_mask(s["masks"][0]).sum()) for s in out["slices"]]
    assert areas == [int((data[..., k] > 0).sum()) for k in range(6)]  # the mask follows each slice's block
    nifti = tmp_path / "seg.nii.gz"
    nifti.write_bytes(base64.b64decode(out["files"]["nifti"].split(",", 1)[1]))
    seg = np.asarray(nib.load(str(nifti)).dataobj)
    assert seg.shape == (32, 24, 6)
    # components="largest" keeps the one 3D block: every voxel of it labelled 1
    assert np.array_equal(seg == 1, data > 0)
    assert out["files"]["dicom_seg"] is None
    expected_ml = (data > 0).sum() * 0.8 * 0.8 * 2.5 / 1000
    assert out["structures"]["liver"]["volume_ml"] == pytest.approx(expected_ml, rel=1e-3)
    assert "liver" in out["report"]


@pytest.mark.skipif(not CT_SERIES.is_dir(), reason="CT fixture series missing")
def test_dicom_series_gives_dicom_seg(client, tmp_path):
    import pydicom

    files = sorted(CT_SERIES.iterdir())
    r = client.post("/v1/volumes/segment", json=body_for(files))
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["slices"]) == len(files) and out["modality"] == "CT"
    seg_path = tmp_path / "seg.dcm"
    seg_path.write_bytes(base64.b64decode(out["files"]["dicom_seg"].split(",", 1)[1]))
    ds = pydicom.dcmread(seg_path)
    assert ds.Modality == "SEG"
    assert ds.SegmentSequence[0].SegmentLabel == "liver"
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID


def test_volume_voxels_count_against_the_request_budget(tmp_path):
    cube_nifti(tmp_path / "cube.nii.gz")  # 32*24*6 = 4608 voxels, charged twice
    app = create_app(BrightEcho(), ServeConfig(max_request_pixels=9000, max_batch=8, batch_wait_ms=1))
    with local_client(app) as c:
        r = c.post("/v1/volumes/segment", json=body_for([tmp_path / "cube.nii.gz"]))
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large" and r.json()["error"]["param"] == "files"
        assert c.get("/readyz").json()["pixels_in_flight"] == 0


@pytest.mark.parametrize("body, param", [
    ({"prompt": "Segment the liver."}, "files"),
    ({"prompt": "Segment the liver.", "files": [{"name": "a.nii", "data": "%%%"}]}, "files[0].data"),
    ({"prompt": " ", "files": [{"name": "a.nii", "data": "AAAA"}]}, "prompt"),
    ({"prompt": "Segment.", "axis": 5, "files": [{"name": "a.nii", "data": "AAAA"}]}, "axis"),
    ({"prompt": "Segment.", "files": [{"name": "a.nii", "data": "AAAA"}]}, "files"),  # not a NIfTI inside
    ({"prompt": "Segment.", "files": [{"name": "a.dcm", "data": "AAAA"}]}, "files"),  # not a DICOM inside
])
def test_bad_volume_requests_answer_in_the_openai_error_shape(client, body, param):
    r = client.post("/v1/volumes/segment", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_chat_endpoint_still_answers(client):
    from tests.serve.conftest import chat_body, data_url, png_bytes

    r = client.post("/v1/chat/completions", json=chat_body(data_url(png_bytes())))
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"


class EachAnswerScripted(torch.nn.Module):
    """Forces the k-th call's last position to ``script[k]``, counted from the last ``restart()``
    (``script_each_batch`` restarts it at every ``predict_batch``: every answer then says the script)."""

    def __init__(self, head, script: list[int]):
        super().__init__()
        self.head, self.script, self.step = head, script, 0

    def forward(self, hidden):
        logits = self.head(hidden)  # (B, L, V)
        if self.step < len(self.script):
            logits[:, -1, self.script[self.step]] += 1e4
        self.step += 1
        return logits


def script_each_batch(predictor, text: str) -> None:
    ids = predictor.tokenizer.encode(text, add_special_tokens=False) + [predictor.eos_token_id]
    head = EachAnswerScripted(predictor.model.mllm.lm_head, ids)
    predictor.model.mllm.lm_head = head
    plain = predictor.predict_batch

    def predict_batch(*args, **kwargs):
        head.step = 0
        return plain(*args, **kwargs)

    predictor.predict_batch = predict_batch


def test_real_tiny_model_endpoint_equals_the_volume_pipeline(tmp_path):
    """The endpoint on the REAL Predictor (tiny random CitrusV, its answer scripted to carry one [SEG])
    gives the same 3D labels as ``segment_volume`` called directly on the same model."""
    from citrus_v.data.medical_io import read_volume
    from citrus_v.serve.predictor_adapter import load_predictor
    from citrus_v.volume.inference import segment_volume
    from tests.serve.conftest import write_tiny_model

    (tmp_path / "tiny").mkdir()
    adapter = load_predictor(write_tiny_model(tmp_path / "tiny"))
    script_each_batch(adapter.predictor, "Sure, it is [SEG].")
    cube_nifti(tmp_path / "cube.nii.gz")
    direct = segment_volume(adapter.predictor, read_volume(tmp_path / "cube.nii.gz"), "Segment the liver.", batch_size=1)
    with local_client(create_app(adapter, ServeConfig(max_batch=1, batch_wait_ms=1))) as c:
        r = c.post("/v1/volumes/segment", json=body_for([tmp_path / "cube.nii.gz"]))
    assert r.status_code == 200, r.text
    nifti = tmp_path / "seg.nii.gz"
    nifti.write_bytes(base64.b64decode(r.json()["files"]["nifti"].split(",", 1)[1]))
    served = np.asarray(nib.load(str(nifti)).dataobj)
    assert served.shape == direct.labels.shape and np.array_equal(served, direct.labels)
    assert r.json()["names"] == direct.names
    assert all(answer == "Sure, it is [SEG]." for answer in direct.answers.values())
    assert all(direct.masks[0].any(axis=(0, 1)))  # a mask on every slice: the comparison is not of empty masks


def test_volume_route_keeps_the_api_key_and_json_only(tmp_path):
    cube_nifti(tmp_path / "cube.nii.gz")
    app = create_app(BrightEcho(), ServeConfig(api_key="secret", max_batch=8, batch_wait_ms=1))
    with local_client(app) as c:
        body = body_for([tmp_path / "cube.nii.gz"])
        assert c.post("/v1/volumes/segment", json=body).status_code == 401
        r = c.post("/v1/volumes/segment", content=b"{}", headers={"Authorization": "Bearer secret", "Content-Type": "text/plain"})
        assert r.status_code == 415 and r.json()["error"]["param"] == "Content-Type"
        r = c.post("/v1/volumes/segment", json=body, headers={"Authorization": "Bearer secret"})
        assert r.status_code == 200 and len(r.json()["slices"]) == 6


def test_nifti_with_other_files_is_refused(client, tmp_path):
    cube_nifti(tmp_path / "cube.nii.gz")
    body = body_for([tmp_path / "cube.nii.gz", tmp_path / "cube.nii.gz"])
    r = client.post("/v1/volumes/segment", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "files" and "alone" in r.json()["error"]["message"]

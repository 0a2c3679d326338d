"""POST /v1/volumes/segment: a volume (one NIfTI file, or the DICOM files of one series) segmented by
the volume pipeline (:mod:`citrus_v.volume`), answered slice by slice for the viewer's slider.

Request (JSON): ``{"files": [{"name": "ct.nii.gz", "data": "<base64>"}, ...], "prompt": "Segment the
liver.", "axis": 2}``. Several DICOM files form one series; a NIfTI comes alone. A zip is not taken:
the browser already sends a folder's files one by one, and unpacking an archive is its own bomb risk.

Before any voxel is decoded, the volume's voxels are counted from its headers (NIfTI header; each DICOM
file's Rows x Columns x frames) and charged to the request's pixel lease, ``VOXEL_CHARGE`` budgeted
pixels each: the float32 volume (4 B) and its RGB slice pictures (3 B) plus the masks are what a voxel
costs, about two budgeted pixels (``budget.BYTES_PER_PIXEL`` = 8 B). Slices go through the server's
batch queue like chat requests, so the one model instance is still called from one worker.

Answer: the structures' measurements and the report (as ``predict --volume --json``), every slice as a
PNG with one COCO RLE per structure, and the files ``predict --volume --out`` writes: segmentation.nii.gz
and, for DICOM input, a DICOM SEG (as base64 data URLs).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from citrus_v.serve.errors import RequestError
from citrus_v.serve.rle import encode_mask

VOXEL_CHARGE = 2  # budgeted pixels per voxel (see the module docstring)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAX_FILES = 2000


@dataclass(frozen=True)
class VolumeRequest:
    files: list[tuple[str, bytes]]  # (name the client gave, bytes)
    prompt: str
    axis: int = 2

    def __post_init__(self) -> None:
        if not self.files:
            raise RequestError(400, "give one NIfTI file or the DICOM files of one series", "files")
        if self.axis not in (0, 1, 2):
            raise RequestError(400, f"axis must be 0, 1 or 2, got {self.axis!r}", "axis")
        if not self.prompt.strip():
            raise RequestError(400, "prompt is empty (e.g. 'Segment the liver.')", "prompt")

    @property
    def is_nifti(self) -> bool:
        return self.files[0][0].lower().endswith(NIFTI_SUFFIXES)


def parse_volume_request(body: Any) -> VolumeRequest:
    """The JSON body -> VolumeRequest; every problem a 400 naming the field."""
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object")
    files, prompt, axis = body.get("files"), body.get("prompt"), body.get("axis", 2)
    if not isinstance(files, list) or not 1 <= len(files) <= MAX_FILES:
        raise RequestError(400, f"files must be a list of 1 to {MAX_FILES} {{name, data}} objects", "files")
    if not isinstance(prompt, str):
        raise RequestError(400, "prompt must be a string", "prompt")
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise RequestError(400, "axis must be an integer (0, 1 or 2)", "axis")
    request = VolumeRequest([_decode_file(f, i) for i, f in enumerate(files)], prompt, axis)
    names = [name.lower() for name, _ in request.files]
    if any(n.endswith(NIFTI_SUFFIXES) for n in names) and len(names) > 1:
        raise RequestError(400, "a NIfTI volume comes alone (one file), not with other files", "files")
    return request


def _decode_file(item: Any, i: int) -> tuple[str, bytes]:
    where = f"files[{i}]"
    if not isinstance(item, dict) or not isinstance(item.get("data"), str):
        raise RequestError(400, f"{where} must be an object with a base64 'data' string", where)
    name = item.get("name") if isinstance(item.get("name"), str) else f"file{i}.dcm"
    data = item["data"].split(",", 1)[1] if item["data"].startswith("data:") else item["data"]
    try:
        return name[:200], base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where}.data is not valid base64", f"{where}.data") from None


def write_upload(request: VolumeRequest, folder: Path) -> Path:
    """The files under ``folder`` with names of our own (the client's names are never paths here);
    -> the path ``read_volume`` takes: the NIfTI file, or the series folder."""
    if request.is_nifti:
        suffix = ".nii.gz" if request.files[0][0].lower().endswith(".gz") else ".nii"
        path = folder / f"volume{suffix}"
        path.write_bytes(request.files[0][1])
        return path
    series = folder / "series"
    series.mkdir()
    for i, (_, data) in enumerate(request.files):
        (series / f"{i:05d}.dcm").write_bytes(data)
    return series


def count_voxels(path: Path) -> int:
    """The volume's voxels from its headers alone (no pixel data decoded)."""
    from citrus_v.data.medical_io import MedicalIOError

    try:
        if path.is_file():
            import nibabel as nib

            return int(np.prod(nib.load(str(path)).shape[:3], dtype=np.int64))
        from citrus_v.data.dicom_io import dcmread

        total = 0
        for f in sorted(path.iterdir()):
            ds = dcmread(f, stop_before_pixels=True)
            total += int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * int(ds.get("NumberOfFrames", 1) or 1)
        return total
    except MedicalIOError as err:
        raise RequestError(400, err.problem, "files", code="invalid_volume") from None
    except Exception as err:  # nibabel's and pydicom's own errors on a broken header
        raise RequestError(400, f"cannot read the volume's header ({type(err).__name__}: {err})", "files",
                           code="invalid_volume") from None


class QueuedSlices:
    """``predict_batch(requests)`` as ``segment_volume`` calls it (from a worker thread), each slice
    submitted to the server's batch queue on the event loop."""

    def __init__(self, queue, loop: asyncio.AbstractEventLoop, sampling, timeout_s: float):
        self.queue, self.loop, self.sampling, self.timeout_s = queue, loop, sampling, timeout_s

    def predict_batch(self, requests):
        futures = [asyncio.run_coroutine_threadsafe(self.queue.submit([image], prompt, self.sampling), self.loop)
                   for image, prompt in requests]
        from concurrent.futures import TimeoutError as FutureTimeout

        from citrus_v.serve.batching import QueueFull

        try:
            return [f.result(timeout=self.timeout_s) for f in futures]
        except QueueFull:
            raise RequestError(503, "server busy: request queue is full, retry later", code="queue_full") from None
        except FutureTimeout:
            raise RequestError(504, f"a slice got no answer within request_timeout_s={self.timeout_s}", code="timeout") from None


def segment_upload(request: VolumeRequest, predictor, reserve) -> dict:
    """Write, count (``reserve(voxels, param)``), read, segment, answer. Runs in a worker thread."""
    from citrus_v.data.medical_io import MedicalIOError, read_volume
    from citrus_v.volume.inference import segment_volume
    from citrus_v.volume.report import write_outputs

    with tempfile.TemporaryDirectory(prefix="citrus-v-volume-") as tmp:
        folder = Path(tmp)
        path = write_upload(request, folder)
        reserve(VOXEL_CHARGE * count_voxels(path), "files")
        try:
            volume = read_volume(path)
        except MedicalIOError as err:
            raise RequestError(400, err.problem, "files", code="invalid_volume") from None
        try:
            seg = segment_volume(predictor, volume, request.prompt, axis=request.axis)
        except (ValueError, IndexError) as err:
            raise RequestError(422, f"the volume cannot be segmented: {err}", code="model_rejected_input") from None
        result = write_outputs(seg, folder / "out")
        return volume_answer(seg, result)


def volume_answer(seg, result: dict) -> dict:
    """The JSON answer: measurements, report, per-slice pictures and RLE masks, the output files."""
    from citrus_v.volume.slicing import slice_images

    n = seg.volume.data.shape[seg.axis]
    pictures = slice_images(seg.volume, seg.axis, list(range(n)))
    slices = [{"index": k, "image": _png_url(pictures[k]),
               "masks": [encode_mask(seg.slice_mask(s, k)) for s in range(len(seg.names))]} for k in range(n)]
    files = {"nifti": _data_url(Path(result["nifti"]), "application/gzip"),
             "dicom_seg": _data_url(Path(result["dicom_seg"]), "application/dicom") if result["dicom_seg"] else None}
    keep = ("structures", "labels", "axis", "shape", "spacing_mm", "modality", "report", "dicom_seg_notes")
    return {"object": "volume.segmentation", **{k: result.get(k) for k in keep}, "names": list(seg.names),
            "slices": slices, "files": files}


def _png_url(picture: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _data_url(path: Path, media: str) -> str:
    return f"data:{media};base64," + base64.b64encode(path.read_bytes()).decode("ascii")

"""3D volumes: NIfTI files and DICOM series folders, in ONE axis convention.

Axis convention (the NIfTI/nibabel one, and what dcm2niix writes for a DICOM series):
``Volume.data[i, j, k]`` is voxel (i, j, k) and ``Volume.affine`` maps ``(i, j, k, 1)`` to
RAS+ millimetres (x to the patient's Right, y Anterior, z Superior), exactly like
``nibabel.load(path).affine``. A NIfTI file is kept as stored. A DICOM series becomes
``i`` = image column, ``j`` = image row counted from the BOTTOM row up, ``k`` = slices sorted
along the slice normal (row direction x column direction), which is dcm2niix's layout, so a
label NIfTI converted from the same series lines up voxel for voxel.
``spacing`` is the voxel size in mm along (i, j, k).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from citrus_v.data.dicom_io import dcmread, decode_pixels
from citrus_v.data.windowing import (
    DEFAULT_CT_WINDOW,
    WINDOW_PRESETS,
    MedicalIOError,
    Window,
    check_finite,
    resolve_window,
    to_display,
)

PLANES = ("axial", "coronal", "sagittal")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A 3D (or 3D + time) image. See the module docstring for the axis convention.

    ``data``: ``(I, J, K)`` or ``(I, J, K, T)``; ``affine``: (4, 4) voxel -> RAS+ mm;
    ``spacing``: mm per voxel along (i, j, k); ``modality``: "CT", "MR", ... or None if unknown.
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim not in (3, 4):
            raise ValueError(f"Volume.data must be 3D or 4D, got shape {self.data.shape}")
        if np.asarray(self.affine).shape != (4, 4):
            raise ValueError(f"Volume.affine must be 4x4, got {np.asarray(self.affine).shape}")
        self.affine = np.asarray(self.affine, dtype=np.float64)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Anatomical direction each voxel axis points to, e.g. ('L', 'A', 'S')."""
        import nibabel as nib

        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]

    def slice(self, axis: int, index: int) -> np.ndarray:
        """The plane ``data.take(index, axis)`` along a VOXEL axis (0, 1 or 2), as stored.

        For a 3D volume of shape (I, J, K), ``slice(2, k)`` is ``(I, J)``. Use ``display_slice``
        for a screen-oriented picture of an anatomical plane.
        """
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        n = self.data.shape[axis]
        if not -n <= index < n:
            raise IndexError(f"slice index {index} out of range for axis {axis} of size {n}")
        return np.take(self.data, index, axis=axis)

    def to_lps(self) -> np.ndarray:
        """Data reoriented so i points Left, j Posterior, k Superior (the DICOM patient frame)."""
        import nibabel.orientations as nio

        transform = nio.ornt_transform(nio.io_orientation(self.affine), nio.axcodes2ornt(("L", "P", "S")))
        return nio.apply_orientation(self.data, transform)

    def num_slices(self, plane: str = "axial") -> int:
        return int(self.to_lps().shape[{"sagittal": 0, "coronal": 1, "axial": 2}[_check_plane(plane)]])

    def display_slice(self, plane: str = "axial", index: int | None = None, *, window: Window = None, t: int = 0) -> np.ndarray:
        """A radiological-view ``(H, W)`` uint8 image of one anatomical plane.

        Patient right on the image left; anterior (axial) or superior (coronal, sagittal) on top.
        ``index`` counts along the plane's normal from the patient's right / anterior / inferior
        side; None = middle slice. Window rule: explicit ``window``; else CT -> soft tissue;
        else 1-99 percentile of that slice.
        """
        lps = self.to_lps()  # (L, P, S[, T])
        if lps.ndim == 4:
            lps = lps[..., t]
        axis = {"sagittal": 0, "coronal": 1, "axial": 2}[_check_plane(plane)]
        n = lps.shape[axis]
        index = n // 2 if index is None else index
        if not -n <= index < n:
            raise IndexError(f"{plane} slice {index} out of range (0..{n - 1})")
        plane2d = np.take(lps, index, axis=axis).T  # rows: P (axial) or S (others); cols: L or P
        if plane != "axial":
            plane2d = plane2d[::-1]  # superior on top
        default = WINDOW_PRESETS[DEFAULT_CT_WINDOW] if self.modality == "CT" else None
        if window is not None:
            resolve_window(window)  # validate early
        return to_display(plane2d.astype(np.float32), window, default=default)


def _check_plane(plane: str) -> str:
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    return plane


# --- NIfTI ----------------------------------------------------------------------------------


def read_nifti(path: str | Path, *, modality: str | None = None) -> Volume:
    """Read a .nii / .nii.gz as stored (orientation, spacing and scaling kept); NaN/infinite voxels are refused."""
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise MedicalIOError(p, "no such file")
    try:
        img = nib.load(str(p))
        data = np.asanyarray(img.dataobj)  # applies scl_slope/inter; integer labels stay integer
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for bad files
        raise MedicalIOError(p, f"unreadable NIfTI ({type(err).__name__}: {err})") from None
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim > 4:
        raise MedicalIOError(p, f"only 3D or 4D NIfTI supported, got shape {data.shape}")
    check_finite(p, data, "voxels")  # an all-NaN volume would be measured as "mean signal nan"
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    meta = {"path": str(p), "nifti_header": img.header.copy()}  # carried over to what is written from it
    return Volume(data=np.asarray(data), affine=np.asarray(img.affine), spacing=zooms, modality=modality, meta=meta)  # type: ignore[arg-type]


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path, *, header: Any = None) -> Path:
    """Write ``array`` (voxel order as in ``Volume.data``) with a RAS+ ``affine``.

    ``header``: the source NIfTI's header (``Volume.meta["nifti_header"]``): its qform and sform (codes
    and matrices), units and description are kept, so a viewer places the output exactly where the
    input was; only what describes the data itself (type, shape, scaling, display range) is reset.
    Without it (a DICOM series) qform = sform = ``affine``, code 1 (scanner)."""
    import nibabel as nib

    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if header is not None:
        img = _with_source_header(arr, np.asarray(affine, dtype=np.float64), header)
    else:
        img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(p))
    return p


def _with_source_header(arr: np.ndarray, affine: np.ndarray, source: Any):
    """A Nifti1Image of ``arr`` on a copy of the source header; refuses an ``affine`` that is not the header's."""
    import nibabel as nib

    header = nib.Nifti1Header.from_header(source)  # a NIfTI-2 or Analyze source becomes NIfTI-1 fields
    if not np.allclose(header.get_best_affine(), affine, atol=1e-5):
        raise ValueError("write_nifti: the affine is not the source header's; pass header=None to write a new one")
    header.set_data_dtype(arr.dtype)
    header.set_slope_inter(1.0, 0.0)  # labels are stored as they are
    header["cal_min"], header["cal_max"] = 0.0, 0.0
    img = nib.Nifti1Image(arr, None, header=header)  # affine None: the header's qform/sform stay as they are
    return img


# --- one multi-frame (enhanced CT/MR) DICOM file ----------------------------------------------


def read_multiframe_volume(path: str | Path, *, modality: str | None = None) -> Volume:
    """An enhanced (multi-frame) CT/MR file -> Volume, in the same layout as a series of its slices.

    highdicom sorts the frames by their per-frame plane positions and checks they form a regular
    grid (the geometry of enhanced objects lives in functional groups, which highdicom reads);
    the modality transform (HU for CT) is applied. Frames without patient positions are refused.
    """
    import highdicom as hd

    p = Path(path)
    try:
        hd_vol = hd.imread(str(p)).get_volume(apply_modality_transform=True)
    except Exception as err:  # noqa: BLE001 - highdicom raises ValueError/RuntimeError for non-grids
        raise MedicalIOError(p, f"multi-frame file is not a regular 3D grid ({type(err).__name__}: {err})") from None
    arr = np.asarray(hd_vol.array, dtype=np.float32)  # (slices, rows, cols)
    rows = arr.shape[1]
    # voxel (i, j, k) = (column, row from the bottom, slice) -> highdicom's (slice, row, column)
    to_src = np.array([[0, 0, 1, 0], [0, -1, 0, rows - 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    lps = np.asarray(hd_vol.affine, dtype=np.float64) @ to_src
    data = np.ascontiguousarray(arr.transpose(2, 1, 0)[:, ::-1, :])
    normal = np.cross(-lps[:3, 0], lps[:3, 1])  # row direction x column direction (as a series is sorted)
    if float(np.dot(lps[:3, 2], normal)) < 0:  # slices sorted against the normal: count them along it
        data = np.ascontiguousarray(data[:, :, ::-1])
        lps[:3, 3] += lps[:3, 2] * (data.shape[2] - 1)
        lps[:3, 2] *= -1
    check_finite(p, data, "voxels")
    if np.all(np.mod(data, 1) == 0) and data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)
    affine = _LPS_TO_RAS @ lps
    spacing = tuple(float(np.linalg.norm(affine[:3, a])) for a in range(3))
    ds = dcmread(p, stop_before_pixels=True)
    found = str(ds.get("Modality")) if ds.get("Modality") else None
    return Volume(data=data, affine=affine, spacing=spacing, modality=modality or found,  # type: ignore[arg-type]
                  meta={"path": str(p), "SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "")),
                        "multiframe_path": str(p)})  # fmt: skip


# --- NRRD (3D Slicer's format) --------------------------------------------------------------

# NRRD "space" -> the diagonal that takes that frame to RAS+
_NRRD_SPACES = {
    "right-anterior-superior": (1.0, 1.0, 1.0), "ras": (1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0), "lps": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0), "las": (-1.0, 1.0, 1.0),
    "scanner-xyz": (-1.0, -1.0, 1.0), "3d-right-handed": (1.0, 1.0, 1.0),
}


def read_nrrd(path: str | Path, *, modality: str | None = None) -> Volume:
    """A .nrrd / .nhdr volume with its geometry: ``space directions`` and ``space origin`` give the
    voxel -> world map, converted to RAS+ from the file's ``space`` (LPS for Slicer's files).

    pynrrd reads the file (the format's reference reader for Python); only the header -> affine
    step is ours. A non-spatial axis (vector, list, time: its direction is "none") is moved last.
    """
    import nrrd

    p = Path(path)
    if not p.is_file():
        raise MedicalIOError(p, "no such file")
    try:
        data, header = nrrd.read(str(p))
    except Exception as err:  # noqa: BLE001 - pynrrd raises NRRDError, ValueError, OSError...
        raise MedicalIOError(p, f"unreadable NRRD ({type(err).__name__}: {err})") from None
    affine, spatial = _nrrd_affine(p, header, data.ndim)
    order = spatial + [a for a in range(data.ndim) if a not in spatial]
    data = np.transpose(data, order)  # spatial axes first, then (at most) one other
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim > 4:
        raise MedicalIOError(p, f"only 3D or 4D NRRD supported, got shape {data.shape}")
    check_finite(p, data, "voxels")
    spacing = tuple(float(np.linalg.norm(affine[:3, a])) for a in range(3))
    return Volume(data=np.ascontiguousarray(data), affine=affine, spacing=spacing, modality=modality,  # type: ignore[arg-type]
                  meta={"path": str(p), "nrrd_space": header.get("space")})  # fmt: skip


def _nrrd_affine(p: Path, header: dict, ndim: int) -> tuple[np.ndarray, list[int]]:
    """(4, 4) voxel -> RAS+ mm and the indices of the spatial axes, from a pynrrd header."""
    space = str(header.get("space", "") or "").lower()
    if "space directions" not in header:  # no world frame: spacings only, origin at 0
        spacings = list(header.get("spacings", [1.0] * ndim))[:3]
        affine = np.eye(4)
        affine[range(len(spacings)), range(len(spacings))] = [float(v) if np.isfinite(v) else 1.0 for v in spacings]
        return affine, list(range(min(ndim, 3)))
    if space not in _NRRD_SPACES:
        raise MedicalIOError(p, f"NRRD space {space!r} is not one of {sorted(set(_NRRD_SPACES))}")
    dirs = header["space directions"]
    spatial = [a for a in range(ndim) if dirs[a] is not None and np.all(np.isfinite(np.asarray(dirs[a], dtype=float)))]
    if len(spatial) not in (2, 3) or ndim - len(spatial) > 1:
        raise MedicalIOError(p, f"NRRD with {len(spatial)} spatial axes of {ndim}: expected 3 (plus at most one other)")
    vox = np.eye(4)
    for col, a in enumerate(spatial):
        vox[:3, col] = np.asarray(dirs[a], dtype=float)
    if len(spatial) == 2:  # a single plane: a unit step along the normal
        normal = np.cross(vox[:3, 0], vox[:3, 1])
        vox[:3, 2] = normal / (np.linalg.norm(normal) or 1.0)
    vox[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    return np.diag([*_NRRD_SPACES[space], 1.0]) @ vox, spatial


# --- DICOM series ---------------------------------------------------------------------------


def read_dicom_series(folder: str | Path, *, series_uid: str | None = None, spacing_tol: float = 0.01) -> Volume:
    """A folder of single-frame DICOM slices -> Volume (see the axis convention above).

    Files that are not DICOM are skipped (counted in ``meta['skipped_files']``). A folder with
    several series needs ``series_uid``. Slices must share orientation and size and be evenly
    spaced (relative tolerance ``spacing_tol``); anything else raises ``MedicalIOError``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MedicalIOError(folder, "not a folder")
    slices, skipped = [], []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = dcmread(f)
        except MedicalIOError:
            skipped.append(f.name)
            continue
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "PixelData" not in ds:
            skipped.append(f.name)  # DICOMDIR, reports, SEG objects without a plane geometry
            continue
        slices.append((f, ds))
    if not slices:
        raise MedicalIOError(folder, f"contains no DICOM image slices with geometry ({len(skipped)} other files)")
    uids = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in slices})
    if series_uid is not None:
        slices = [(f, ds) for f, ds in slices if str(ds.get("SeriesInstanceUID", "")) == series_uid]
        if not slices:
            raise MedicalIOError(folder, f"no slice of series {series_uid}; series present: {uids}")
    elif len(uids) > 1:
        raise MedicalIOError(folder, f"holds {len(uids)} series {uids}; pass series_uid to pick one")
    return _stack_series(folder, slices, skipped, spacing_tol)


def _stack_series(folder: Path, slices: list[tuple[Path, Any]], skipped: list[str], spacing_tol: float) -> Volume:
    from pydicom.pixels import apply_modality_lut

    iop = np.array(slices[0][1].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]  # LPS direction of increasing column / increasing row
    normal = np.cross(row_dir, col_dir)
    for f, ds in slices:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=np.float64), iop, atol=1e-4):
            raise MedicalIOError(f, "ImageOrientationPatient differs from the rest of the series")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise MedicalIOError(f, "multi-frame file inside a series folder: read it with read_dicom")
    slices.sort(key=lambda fd: float(np.dot(np.array(fd[1].ImagePositionPatient, dtype=np.float64), normal)))
    positions = np.array([fd[1].ImagePositionPatient for fd in slices], dtype=np.float64)  # (K, 3) LPS mm
    proj = positions @ normal
    if len(slices) > 1:
        gaps = np.diff(proj)
        if np.any(gaps <= 1e-6):
            dup = slices[int(np.argmin(gaps)) + 1][0]
            raise MedicalIOError(dup, "two slices share the same position (duplicate or mixed series)")
        if np.ptp(gaps) > spacing_tol * float(np.mean(gaps)):
            raise MedicalIOError(folder, f"uneven slice spacing {gaps.min():.3f}..{gaps.max():.3f} mm (missing slices?)")
        step = (positions[-1] - positions[0]) / (len(slices) - 1)  # LPS mm per k
    else:
        step = normal * float(slices[0][1].get("SliceThickness", 1.0) or 1.0)
    first = slices[0][1]
    rows, cols = int(first.Rows), int(first.Columns)
    dr, dc = (float(v) for v in first.PixelSpacing)  # (between rows, between columns)
    planes = []
    for f, ds in slices:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise MedicalIOError(f, f"slice size {ds.Rows}x{ds.Columns} differs from {rows}x{cols}")
        raw = decode_pixels(ds, f)
        planes.append(np.asarray(apply_modality_lut(raw, ds), dtype=np.float32))  # slope/intercept per slice
    stack = np.stack(planes)  # (K, rows, cols)
    check_finite(folder, stack, "voxels")  # float pixel data may hold NaN
    data = np.ascontiguousarray(stack.transpose(2, 1, 0)[:, ::-1, :])  # (cols, rows bottom-up, K)
    if np.all(np.mod(data, 1) == 0) and data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)  # HU are integers for nearly every CT: halve the memory
    # voxel (i, j, k) with row r = rows - 1 - j: LPS = P0 + i*dc*row_dir + (rows-1-j)*dr*col_dir + k*step
    lps = np.eye(4)
    lps[:3, 0] = dc * row_dir
    lps[:3, 1] = -dr * col_dir
    lps[:3, 2] = step
    lps[:3, 3] = positions[0] + (rows - 1) * dr * col_dir
    affine = _LPS_TO_RAS @ lps
    spacing = (dc, dr, float(np.linalg.norm(step)))
    meta = {
        "path": str(folder),
        "files": [f.name for f, _ in slices],
        "file_paths": [str(f) for f, _ in slices],  # slice k's file (a DICOM SEG references them)
        "skipped_files": skipped,
        "SeriesInstanceUID": str(first.get("SeriesInstanceUID", "")),
    }
    modality = str(first.get("Modality")) if first.get("Modality") else None
    return Volume(data=data, affine=affine, spacing=spacing, modality=modality, meta=meta)

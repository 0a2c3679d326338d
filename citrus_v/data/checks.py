"""What a record points to, opened and checked: the one rule `data validate` and training share.

``record_problems(record, source, line, base_dir)`` opens the record's images and masks (headers
only where the format allows) and returns every problem as a ``RecordError`` naming
``file:line: field 'images[0]': ...``:

- a path leaves the data root (the JSONL file's folder; symlinks followed) unless ``allow_outside``;
- an image is missing, not an image, above ``max_pixels``, or holds several frames (a record cannot
  choose one), or its DICOM header disagrees with its pixel data;
- a mask is missing, not an image, or not the size of the record's first image;
- a box is not finite or lies outside the first image (boxes are in its original pixels, or fractions
  of its size with ``bbox_type: norm1``; ``schema`` refuses what the published template cannot read).

Training (``JsonlDataset``) calls ``check_record`` on each record as it is first encoded, so a
large set starts training at once and a record that validation refuses is refused there too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from citrus_v.data.medical_io import MAX_IMAGE_PIXELS
from citrus_v.data.schema import Record, RecordError, resolve


@dataclass(frozen=True)
class FileRules:
    """How strictly a record's files are checked. ``max_pixels``: width x height (x frames) from the header."""

    allow_outside: bool = False
    max_pixels: int = MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        if not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ValueError(f"FileRules.max_pixels must be a positive int, got {self.max_pixels!r}")


def record_problems(record: Record, source: str | Path, line: int | None, base_dir: str | Path,
                    rules: FileRules = FileRules()) -> list[RecordError]:
    """Every problem with the files and boxes of ``record`` (empty when it is fine)."""
    problems: list[RecordError] = []

    def fail(field: str, message: str) -> None:
        problems.append(RecordError(message, source=str(source), line=line, field=field))

    outside = {} if rules.allow_outside else {e.field: e for e in path_problems(record, source, line, base_dir)}
    sizes: list[tuple[int, int] | None] = []  # (H, W) per image, None when unreadable
    for key, paths in (("images", record.images), ("masks", record.masks)):
        for i, rel in enumerate(paths):
            path = resolve(rel, base_dir)
            if f"{key}[{i}]" in outside:  # never opened
                problems.append(outside[f"{key}[{i}]"])
                if key == "images":
                    sizes.append(None)
                continue
            try:
                hw = image_hw(path, rules.max_pixels) if key == "images" else mask_hw(path, rules.max_pixels)
            except ValueError as err:  # MedicalIOError names the file
                fail(f"{key}[{i}]", str(err))
                hw = None
            if key == "images":
                sizes.append(hw)
            elif hw is not None and sizes and sizes[0] is not None and hw != sizes[0]:
                fail(f"{key}[{i}]", f"{rel}: mask is {hw[1]}x{hw[0]} (WxH), its image is {sizes[0][1]}x{sizes[0][0]}")
    if record.objects is not None:
        first = sizes[0] if sizes else None
        boxes = record.objects.pixels(first) if first is not None else record.objects.bbox
        for j, box in enumerate(boxes):
            message = box_problem(box, first)
            if message:
                fail(f"objects.bbox[{j}]", message)
    return problems


def path_problems(record: Record, source: str | Path, line: int | None, base_dir: str | Path) -> list[RecordError]:
    """The record's image and mask paths that leave ``base_dir`` (symlinks followed); no file is opened."""
    root = Path(base_dir).resolve()
    return [
        RecordError(f"{rel}: outside the data root {root} (pass --allow-outside to permit)", source=str(source), line=line,
                    field=f"{key}[{i}]")
        for key, paths in (("images", record.images), ("masks", record.masks))
        for i, rel in enumerate(paths)
        if not _inside(resolve(rel, base_dir), root)
    ]


def check_paths(record: Record, source: str | Path, line: int | None, base_dir: str | Path) -> None:
    """Raise the first of ``path_problems`` (a ``RecordError``)."""
    problems = path_problems(record, source, line, base_dir)
    if problems:
        raise problems[0]


def check_record(record: Record, source: str | Path, line: int | None, base_dir: str | Path,
                 rules: FileRules = FileRules()) -> None:
    """Raise the first of ``record_problems`` (a ``RecordError``, a ``UserError``)."""
    problems = record_problems(record, source, line, base_dir, rules)
    if problems:
        raise problems[0]


def box_problem(box: list[float], image_hw: tuple[int, int] | None) -> str | None:
    """Why ``[x1, y1, x2, y2]`` (finite: ``schema.validate`` saw to it) cannot be a box in an image of
    ``image_hw`` (None: it can, or no size is known)."""
    if image_hw is None:
        return None
    h, w = image_hw
    x1, y1, x2, y2 = (float(v) for v in box)
    if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
        return f"box {box} lies outside its image ({w}x{h} pixels, WxH)"
    return None


def image_hw(path: Path, max_pixels: int) -> tuple[int, int]:
    """(H, W) of the picture training would read from ``path``; the header only for raster and DICOM.

    Refuses what ``medical_io.load_image`` refuses without a frame choice: several frames, sizes
    above ``max_pixels``, DICOM header/pixel disagreement.
    """
    from citrus_v.data.dicom_io import check_image_size, check_pixel_length, dcmread
    from citrus_v.data.medical_io import MedicalIOError, file_kind, load_image

    kind = file_kind(path)
    if kind == "raster":
        return _raster_hw(path, max_pixels, what="image")
    if kind == "dicom":
        ds = dcmread(path)  # reads the bytes; pixels are not decoded
        frames, rows, cols = check_image_size(ds, path, max_pixels)
        check_pixel_length(ds, path)
        if frames > 1:
            raise MedicalIOError(path, f"holds {frames} frames; a record's image must be one picture")
        return rows, cols
    return tuple(load_image(path, max_pixels=max_pixels).shape[:2])  # NIfTI / series: read in full


def mask_hw(path: Path, max_pixels: int) -> tuple[int, int]:
    """(H, W) of a mask file (a raster image, as training reads it), from its header."""
    from citrus_v.data.medical_io import MedicalIOError

    if not path.is_file():
        raise MedicalIOError(path, "no such file")
    return _raster_hw(path, max_pixels, what="mask")


def _raster_hw(path: Path, max_pixels: int, what: str) -> tuple[int, int]:
    import warnings

    from PIL import Image, UnidentifiedImageError

    from citrus_v.data.medical_io import MedicalIOError, check_raster_size

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # lazy: the header only
                check_raster_size(im.size, path, max_pixels)
                n = getattr(im, "n_frames", 1)
                if n > 1:
                    raise MedicalIOError(path, f"holds {n} frames; a record's {what} must be one picture")
                w, h = im.size
    except MedicalIOError:
        raise
    except Image.DecompressionBombError as err:
        raise MedicalIOError(path, f"rejected as a decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise MedicalIOError(path, f"not a readable {what} (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise MedicalIOError(path, f"{what} cannot be read ({err})") from None
    return h, w


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False

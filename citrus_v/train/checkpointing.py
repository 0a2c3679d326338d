"""Atomic, verifiable training checkpoints (no pickle).

A checkpoint is a folder ``step_000123/`` under a checkpoint root::

    model.safetensors       the model's full state dict
    optimizer.safetensors   optimizer tensors, keyed "<param fqn>::<state name>"
    optimizer.json          the rest of the optimizer state (param groups, scalar state)
    scheduler.json          LR scheduler state
    rng.safetensors         torch CPU (and CUDA) generator states
    rng.json                python and numpy generator states
    trainer_state.json      step, epoch, data position, stage, world size
    manifest.json           sha256 and size of every file above; written last

Everything is written into ``step_000123.tmp/`` and the folder is renamed with
``os.replace`` only once complete, so a crash leaves either the old set of checkpoints or
the new one, never a half-written ``step_*``; stray ``*.tmp`` folders are ignored and
removed. ``latest`` (a one-line text file naming the newest folder) is replaced atomically
the same way. Loading re-hashes every file and refuses a checkpoint whose manifest is
missing or whose files are missing or changed, naming the file.

``model_state``/``load_state`` gather and restore the full model and optimizer state of a plain,
DDP or FSDP2 model (the recipe's ``_save`` and resume), for every stage alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from citrus_v.errors import UserError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_SEP = "::"  # between a parameter's name and its optimizer-state name

log = logging.getLogger(__name__)

# A seam for the chaos test (tests/train/test_chaos.py, which kill -9s a run at each phase): called with
# the name of each phase a save has just passed. None in every normal run.
on_phase: Any = None


def passed(phase: str) -> None:
    """Mark that a save has passed ``phase`` (see ``SAVE_PHASES``)."""
    if on_phase is not None:
        on_phase(phase)


# the phases of a checkpoint's save, then of the final folder's (pipeline._write_beside), in order
SAVE_PHASES = ("checkpoint:files", "checkpoint:manifest", "checkpoint:renamed", "checkpoint:latest",
               "checkpoint:pruned", "final:filled", "final:moved_aside", "final:renamed")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, partial or corrupt. ``path`` is the offending file or folder;
    ``previous`` is the newest older checkpoint that could be used instead, if any."""

    def __init__(self, message: str, *, path: Path, previous: Path | None = None):
        hint = (f"; the previous checkpoint {previous} verifies: move this checkpoint's folder aside and run again "
                f"with --resume to continue from it") if previous else ""
        super().__init__(f"{path}: {message}{hint}")
        self.reason, self.path, self.previous = message, path, previous


@dataclass
class TrainingState:
    """What a checkpoint holds, as plain objects (state dicts use parameter names)."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # torch's {"state": {fqn: {...}}, "param_groups": [...]} layout
    scheduler: dict[str, Any]
    trainer: dict[str, Any]  # step, epoch, position, ... (json-able)
    rng: dict[str, Any] | None = None  # from capture_rng(); None leaves generators alone


# --- RNG ----------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].copy(), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": state["torch"]}
    for i, s in enumerate(state.get("cuda", [])):
        tensors[f"cuda.{i}"] = s
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    meta = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"name": name, "keys": np.asarray(keys).tolist(), "pos": pos, "has_gauss": has_gauss, "cached": cached},
    }
    return tensors, meta


def _rng_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    py, npy = meta["python"], meta["numpy"]
    state: dict[str, Any] = {
        "python": (py["version"], tuple(py["internal"]), py["gauss"]),
        "numpy": (npy["name"], np.asarray(npy["keys"], dtype=np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]),
        "torch": tensors["torch"],
    }
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda:
        state["cuda"] = cuda
    return state


# --- optimizer state <-> (tensors, json) ---------------------------------------------------------


def _split_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for key, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{key}{_SEP}{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(key), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for flat, value in tensors.items():
        key, _, name = flat.rpartition(_SEP)
        state.setdefault(key, {})[name] = value
    for key, entry in meta["scalars"].items():
        state.setdefault(key, {}).update(entry)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# --- writing -------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True), encoding="utf-8")


def _unshare(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): copy the repeats."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, v in sd.items():
        v = v.detach().cpu().contiguous()
        key = (v.untyped_storage().data_ptr(), v.storage_offset())
        out[k] = v.clone() if key in seen else v
        seen.add(key)
    return out


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def save_checkpoint(root: str | Path, step: int, state: TrainingState, *, keep_last: int | None = None) -> Path:
    """Write ``state`` as ``root/step_XXXXXX`` atomically; update ``root/latest``; prune to
    ``keep_last`` checkpoints. Returns the final folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / (final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    save_file(_unshare(state.model), str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _split_optimizer(state.optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    _write_json(tmp / "optimizer.json", opt_meta)
    _write_json(tmp / "scheduler.json", state.scheduler)
    if state.rng is not None:
        rng_tensors, rng_meta = _rng_to_files(state.rng)
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        _write_json(tmp / "rng.json", rng_meta)
    _write_json(tmp / "trainer_state.json", {**state.trainer, "step": step})
    passed("checkpoint:files")

    files = {}
    for f in sorted(tmp.iterdir()):
        _fsync(f)
        files[f.name] = {"sha256": _sha256(f), "bytes": f.stat().st_size}
    _write_json(tmp / MANIFEST, {"format": FORMAT_VERSION, "step": step, "files": files})
    _fsync(tmp / MANIFEST)
    passed("checkpoint:manifest")

    if final.exists():  # re-saving a step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    passed("checkpoint:renamed")
    _atomic_write_text(root / LATEST, final.name + "\n")
    _fsync_dir(root)
    passed("checkpoint:latest")
    if keep_last is not None:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old)
    passed("checkpoint:pruned")
    return final


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:  # some filesystems cannot fsync a folder; the rename is still atomic
        pass


# --- finding and reading -------------------------------------------------------------------------


def list_checkpoints(root: str | Path) -> list[Path]:
    """Finished checkpoint folders (``step_N``, not ``*.tmp``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_partial(root: str | Path) -> list[Path]:
    """Delete ``*.tmp`` leftovers of a run killed while saving; returns what was removed."""
    root = Path(root)
    gone = [p for p in root.glob("step_*.tmp") if p.is_dir()] if root.is_dir() else []
    for p in gone:
        shutil.rmtree(p)
    return gone


def verify_checkpoint(path: str | Path, *, previous: Path | None = None) -> dict[str, Any]:
    """Re-hash every file against the manifest; return the manifest or raise CheckpointError."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise CheckpointError("is not a checkpoint folder", path=path, previous=previous)
    if not manifest_path.is_file():
        raise CheckpointError(f"partial checkpoint: {MANIFEST} is missing", path=manifest_path, previous=previous)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"unreadable manifest ({e})", path=manifest_path, previous=previous) from None
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"format {manifest.get('format')!r}, expected {FORMAT_VERSION}", path=manifest_path)
    for name in ("model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "trainer_state.json"):
        if name not in files:
            raise CheckpointError(f"manifest does not list {name}", path=manifest_path, previous=previous)
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError("file listed in the manifest is missing", path=f, previous=previous)
        size = f.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"size {size} bytes, manifest says {info['bytes']} (truncated?)", path=f, previous=previous)
        if _sha256(f) != info["sha256"]:
            raise CheckpointError("sha256 does not match the manifest (corrupt)", path=f, previous=previous)
    return manifest


def _previous_of(path: Path) -> Path | None:
    """The newest checkpoint older than ``path`` that verifies, for the error hint."""
    older = [p for p in list_checkpoints(path.parent) if p.name < path.name]
    for p in reversed(older):
        try:
            verify_checkpoint(p)
            return p
        except CheckpointError:
            continue
    return None


def load_checkpoint(path: str | Path) -> TrainingState:
    """Verify and read one checkpoint folder (tensors on CPU)."""
    path = Path(path)
    try:
        verify_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(e.reason, path=e.path, previous=_previous_of(path)) from None

    def tensors(name: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(path / name))
        except SafetensorError as e:
            raise CheckpointError(f"not a readable safetensors file ({e})", path=path / name, previous=_previous_of(path)) from None

    def js(name: str) -> Any:
        return json.loads((path / name).read_text(encoding="utf-8"))

    rng = None
    if (path / "rng.safetensors").is_file():
        rng = _rng_from_files(tensors("rng.safetensors"), js("rng.json"))
    return TrainingState(
        model=tensors("model.safetensors"),
        optimizer=_join_optimizer(tensors("optimizer.safetensors"), js("optimizer.json")),
        scheduler=js("scheduler.json"),
        trainer=js("trainer_state.json"),
        rng=rng,
    )


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest finished checkpoint under ``root`` (not verified: load_checkpoint does that,
    so a corrupt newest checkpoint is refused rather than silently skipped)."""
    found = list_checkpoints(root)
    return found[-1] if found else None


# ---------------------------------------------------------------- model + optimizer state
def model_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full (unsharded, CPU) model and optimizer state keyed by parameter name; works for
    plain, DDP and FSDP2 models alike."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def load_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainingState) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, state.model, options=StateDictOptions(full_state_dict=True))
    # non-strict: trainable parameters that never received a gradient (e.g. SAM2's unused
    # mask-prompt convs) legitimately have no optimizer state, and must stay without one
    set_optimizer_state_dict(model, optimizer, state.optimizer, options=StateDictOptions(full_state_dict=True, strict=False))

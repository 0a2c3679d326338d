"""Checkpoints: safetensors + config.json, written under the PUBLISHED Citrus-V tensor names.

Our modules are transformers' classes, whose SAM2 names differ from the facebookresearch/sam2
names of the published checkpoint (``grounding_encoder.sam2_model.*``). ``published_names``
maps each of our state-dict keys to its published key(s); the loader accepts published names
(both on-disk MLLM spellings) and our own names, and fails listing every tensor left over.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from citrus_v.config import CitrusVConfig
from citrus_v.errors import UserError
from citrus_v.model import token_reading
from citrus_v.model.litemedsam import litemedsam_name


class ModelFolderError(UserError, ValueError):
    """A model folder (ours or the published layout) is not what a model folder must be; names the file."""

OURS_SAM2 = "segmenter.sam2."
PUBLISHED_SAM2 = "grounding_encoder.sam2_model."
# a LiteMedSAM segmenter (segmenter.image_encoder/prompt_encoder/mask_decoder) is written under
# this prefix with the tensor names of lite_medsam.pth itself
OURS_SEGMENTER = "segmenter."
PUBLISHED_LITEMEDSAM = "grounding_encoder.litemedsam."
# transformers keeps two copies of SAM2's positional table; we tie them (segmenter.py) and
# write the table once
TIED_ALIAS = OURS_SAM2 + "prompt_encoder.shared_embedding.positional_embedding"
CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE, TOKENIZER_FILE = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
)
FORMAT_VERSION = 1

# (pattern, replacement) on the key below segmenter.sam2., applied in order
_SAM2_RULES: list[tuple[str, str]] = [
    (r"^vision_encoder\.backbone\.patch_embed\.projection\.", "image_encoder.trunk.patch_embed.proj."),
    (r"^vision_encoder\.backbone\.", "image_encoder.trunk."),
    (r"^vision_encoder\.neck\.convs\.(\d+)\.", r"image_encoder.neck.convs.\1.conv."),
    (r"^(prompt_encoder\.shared_embedding|shared_image_embedding)\.positional_embedding$",
     "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"^prompt_encoder\.mask_embed\.conv1\.", "sam_prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "sam_prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "sam_prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "sam_prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "sam_prompt_encoder.mask_downscaling.6."),
    (r"^prompt_encoder\.", "sam_prompt_encoder."),
    (r"^mask_decoder\.upscale_conv1\.", "sam_mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "sam_mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "sam_mask_decoder.output_upscaling.3."),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "sam_mask_decoder.transformer.norm_final_attn."),
    (r"^mask_decoder\.", "sam_mask_decoder."),
    (r"^memory_attention\.layer_norm\.", "memory_attention.norm."),
    (r"^memory_encoder\.feature_projection\.", "memory_encoder.pix_feat_proj."),
    (r"^memory_encoder\.projection\.", "memory_encoder.out_proj."),
    (r"^memory_encoder\.memory_fuser\.layers\.(\d+)\.depthwise_conv\.", r"memory_encoder.fuser.layers.\1.dwconv."),
    (r"^memory_encoder\.memory_fuser\.layers\.(\d+)\.pointwise_conv(\d)\.", r"memory_encoder.fuser.layers.\1.pwconv\2."),
    (r"^memory_encoder\.memory_fuser\.layers\.(\d+)\.layer_norm\.", r"memory_encoder.fuser.layers.\1.norm."),
    (r"^memory_encoder\.memory_fuser\.layers\.(\d+)\.scale$", r"memory_encoder.fuser.layers.\1.gamma"),
    (r"^memory_temporal_positional_encoding$", "maskmem_tpos_enc"),
    (r"^no_memory_embedding$", "no_mem_embed"),
    (r"^no_memory_positional_encoding$", "no_mem_pos_enc"),
    (r"^no_object_pointer$", "no_obj_ptr"),
    (r"^object_pointer_proj\.", "obj_ptr_proj."),
    (r"\.o_proj\.", ".out_proj."),
    (r"\.layer_norm(\d)\.", r".norm\1."),
]
_SAM2_COMPILED = [(re.compile(p), r) for p, r in _SAM2_RULES]
_DOWNSAMPLER = re.compile(r"^memory_encoder\.mask_downsampler\.(?:layers\.(\d+)\.(conv|layer_norm)|final_conv)\.")
# transformers' MLPs are proj_in, layers.*, proj_out; SAM2's are one list layers.0..k-1
_FEED_FORWARD = re.compile(r"^(.*)\.(proj_in|proj_out|layers\.(\d+))\.(weight|bias)$")


def _feed_forward_depths(sam2_keys: Iterable[str]) -> dict[str, int]:
    """Prefix of every transformers MLP -> its number of linear layers."""
    keys = list(sam2_keys)
    prefixes = {k[: -len(".proj_in.weight")] for k in keys if k.endswith(".proj_in.weight")}
    depth = {}
    for prefix in prefixes:
        hidden = {m.group(1) for k in keys if (m := re.match(re.escape(prefix) + r"\.layers\.(\d+)\.", k))}
        depth[prefix] = 2 + len(hidden)
    return depth


def _sam2_published(key: str, ff_depth: dict[str, int], n_down: int, point_rows: int) -> list[str]:
    """One of our keys below segmenter.sam2. -> its published key(s) below sam2_model."""
    if key == "prompt_encoder.point_embed.weight":  # one (4, C) table vs four (1, C) embeddings
        return [f"sam_prompt_encoder.point_embeddings.{i}.weight" for i in range(point_rows)]
    m = _DOWNSAMPLER.match(key)
    if m:  # conv/norm/act triples in one Sequential: conv at 3i, norm at 3i+1, final conv last
        index = 3 * n_down if m.group(1) is None else 3 * int(m.group(1)) + (m.group(2) == "layer_norm")
        key = f"memory_encoder.mask_downsampler.encoder.{index}." + key[m.end():]
    m = _FEED_FORWARD.match(key)
    if m and m.group(1) in ff_depth:
        prefix, which, hidden, leaf = m.groups()
        index = 0 if which == "proj_in" else ff_depth[prefix] - 1 if which == "proj_out" else int(hidden) + 1
        key = f"{prefix}.layers.{index}.{leaf}"
    for pattern, repl in _SAM2_COMPILED:
        key = pattern.sub(repl, key)
    return [key]


def published_names(state_shapes: dict[str, tuple[int, ...]]) -> dict[str, list[str]]:
    """Our state-dict key -> the published key(s) holding it (several = split along dim 0)."""
    sam2_keys = [k[len(OURS_SAM2):] for k in state_shapes if k.startswith(OURS_SAM2)]
    ff_depth = _feed_forward_depths(sam2_keys)
    n_down = len({m.group(1) for k in sam2_keys if (m := _DOWNSAMPLER.match(k)) and m.group(1) is not None})
    mapping: dict[str, list[str]] = {}
    for key, shape in state_shapes.items():
        if key.startswith(OURS_SAM2):
            rows = shape[0] if key.endswith("point_embed.weight") else 1
            sub = _sam2_published(key[len(OURS_SAM2):], ff_depth, n_down, rows)
            mapping[key] = [PUBLISHED_SAM2 + s for s in sub]
        elif key.startswith(OURS_SEGMENTER):
            mapping[key] = [PUBLISHED_LITEMEDSAM + litemedsam_name(key[len(OURS_SEGMENTER):])]
        else:  # mllm.* and seg_projector.* already carry the published names
            mapping[key] = [key]
    return mapping


def published_shapes(state_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The published name -> shape list our model corresponds to (tied copies counted once)."""
    out: dict[str, tuple[int, ...]] = {}
    for key, names in published_names(state_shapes).items():
        shape = tuple(state_shapes[key])
        part = (shape[0] // len(names), *shape[1:]) if len(names) > 1 else shape
        for name in names:
            if name in out and out[name] != part:
                raise ValueError(f"{key} maps to {name} with shape {part}, already {out[name]}")
            out[name] = part
    return out


def normalize_published_key(key: str) -> str:
    """Accept both on-disk MLLM spellings (DESIGN §1)."""
    if key.startswith("mllm.visual."):
        return "mllm.model.visual." + key[len("mllm.visual."):]
    m = re.match(r"^mllm\.model\.(embed_tokens|layers|norm)\.", key)
    if m:
        return "mllm.model.language_model." + key[len("mllm.model."):]
    return key


def to_published_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    out: dict[str, torch.Tensor] = {}
    for key, names in published_names(shapes).items():
        if key == TIED_ALIAS:
            continue
        tensor = state_dict[key]
        pieces = tensor.chunk(len(names), dim=0) if len(names) > 1 else (tensor,)
        for name, piece in zip(names, pieces):
            out[name] = piece.detach().contiguous()
    return out


def resolve_published_keys(
    raw_keys: Iterable[str], state_shapes: dict[str, tuple[int, ...]]
) -> tuple[dict[str, tuple[str, int, int]], list[str], list[str]]:
    """Which of our tensors each stored key fills, from the names alone.

    Returns ``{raw key: (our key, piece index, pieces)}`` (index -1: the key is our own name, the
    whole tensor), the published names no stored key gave (missing) and the stored keys with no
    home (unexpected). A tensor split in several published keys takes piece i along dim 0.
    """
    mapping = published_names(state_shapes)
    where: dict[str, tuple[str, int]] = {}  # published key -> (our key, piece index)
    for key, names in mapping.items():
        if key == TIED_ALIAS:  # filled from its source
            continue
        for i, name in enumerate(names):
            where[name] = (key, i)
    assigned: dict[str, tuple[str, int, int]] = {}
    unexpected = []
    for raw_key in raw_keys:
        key = normalize_published_key(raw_key)
        if key in where:
            ours, index = where[key]
            assigned[raw_key] = (ours, index, len(mapping[ours]))
        elif key in mapping:  # our own name
            assigned[raw_key] = (key, -1, 1)
        else:
            unexpected.append(raw_key)
    got: dict[str, set[int]] = {}
    for ours, index, _ in assigned.values():
        got.setdefault(ours, set()).add(index)
    missing = [
        name
        for key, names in mapping.items()
        if key != TIED_ALIAS and -1 not in got.get(key, ())
        for i, name in enumerate(names)
        if i not in got.get(key, ())
    ]
    return assigned, missing, unexpected


def piece_shape(shape: tuple[int, ...], index: int, pieces: int) -> tuple[int, ...]:
    """The shape stored for piece ``index`` of ``pieces`` of a tensor of ``shape`` (-1: all of it)."""
    return tuple(shape) if index < 0 or pieces == 1 else (shape[0] // pieces, *shape[1:])


def _check_complete(source: str, missing: list[str], unexpected: list[str], bad_shape: list[str]) -> None:
    if missing or unexpected or bad_shape:  # the folder's weights are not this model's: the user's folder, one line
        raise ModelFolderError(
            f"{source}: {len(missing)} missing tensor(s) {missing[:20]}, {len(unexpected)} unexpected "
            f"tensor(s) {unexpected[:20]}, {len(bad_shape)} shape mismatch(es) {bad_shape[:20]}"
        )


def from_published_state_dict(
    tensors: dict[str, torch.Tensor], state_shapes: dict[str, tuple[int, ...]], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Published (or our own) names -> our state dict; every tensor must find a home and vice versa."""
    assigned, missing, unexpected = resolve_published_keys(tensors, state_shapes)
    pieces: dict[str, dict[int, torch.Tensor]] = {}
    for raw_key, (ours, index, _) in assigned.items():
        pieces.setdefault(ours, {})[index] = tensors[raw_key]
    out: dict[str, torch.Tensor] = {}
    for key, got in pieces.items():
        if -1 in got:
            out[key] = got[-1]
        elif not missing:
            out[key] = torch.cat([got[i] for i in range(len(got))], dim=0) if len(got) > 1 else got[0]
    source_key = OURS_SAM2 + "shared_image_embedding.positional_embedding"
    if TIED_ALIAS in state_shapes and source_key in out:
        out[TIED_ALIAS] = out[source_key]
    bad_shape = [
        f"{k}: {tuple(v.shape)} != {tuple(state_shapes[k])}" for k, v in out.items() if tuple(v.shape) != tuple(state_shapes[k])
    ]
    _check_complete(source, missing, unexpected, bad_shape)
    return out


def weight_files(directory: Path) -> list[str]:
    """model.safetensors, or the shards listed by model.safetensors.index.json."""
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted(set(weight_map.values()))
    if (directory / WEIGHTS_FILE).is_file():
        return [WEIGHTS_FILE]
    raise FileNotFoundError(f"{directory}: neither {WEIGHTS_FILE} nor {INDEX_FILE}")


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of model.safetensors or of the shards listed by model.safetensors.index.json."""
    files = weight_files(directory)
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(directory / name), framework="pt") as f:
            for key in f.keys():
                if key in tensors:
                    raise ModelFolderError(f"{directory / name}: tensor {key} appears in more than one shard")
                tensors[key] = f.get_tensor(key)
    return tensors


def save_pretrained(
    model: torch.nn.Module,
    directory: str | Path,
    tokenizer_file: str | Path | None = None,
    dtype: torch.dtype | None = None,
    *,
    tokenizer: Any = None,
    weights_only: bool = False,
) -> Path:
    """config.json + model.safetensors (published names; no pickle) + the tokenizer files.

    ``dtype`` (torch.float16 / torch.bfloat16) writes every floating-point tensor at that
    precision (half the bytes: how the tiny default stays under its size budget); the loader
    copies them into the model's own (fp32) parameters. The tokenizer comes from ``tokenizer`` (its
    ``save_pretrained``: tokenizer.json, tokenizer_config.json, chat_template.jinja), else
    ``tokenizer_file``, else must already lie in ``directory``: a folder that cannot load back is
    refused before anything is written, unless ``weights_only``.
    """
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"save_pretrained: dtype must be a floating-point dtype, got {dtype}")
    directory = Path(directory)
    if tokenizer is None and tokenizer_file is None and not weights_only and not (directory / TOKENIZER_FILE).is_file():
        raise ValueError(
            f"save_pretrained: {directory} would have no {TOKENIZER_FILE}; pass tokenizer= (or tokenizer_file=), "
            "or weights_only=True for a folder that is not meant to load on its own"
        )
    directory.mkdir(parents=True, exist_ok=True)
    config: CitrusVConfig = model.config
    payload = {"model_type": "citrus_v", "format_version": FORMAT_VERSION, **config.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    tensors = to_published_state_dict(token_reading.drop_head(model.state_dict()))  # training-only head left out
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "layout": "citrus_v_published"})
    if tokenizer is not None:
        _save_tokenizer(tokenizer, directory)
    elif tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, directory / TOKENIZER_FILE)
    return directory


def _save_tokenizer(tokenizer: Any, directory: Path) -> None:
    """The tokenizer's own files, carrying our chat template when it has none."""
    from citrus_v.data.tokenizer import CHAT_TEMPLATE

    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(directory))


def read_config(directory: str | Path) -> CitrusVConfig:
    path = Path(directory) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{path}: cannot read config ({err})") from None
    if data.pop("model_type", None) != "citrus_v":
        raise ModelFolderError(f"{path}: model_type must be 'citrus_v'")
    version = data.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise ModelFolderError(f"{path}: format_version {version!r} is not {FORMAT_VERSION}")
    try:
        return CitrusVConfig.from_dict(data)
    except ValueError as err:
        raise ModelFolderError(f"{path}: {err}") from None


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes lie in a .safetensors file (read from its header, no data read)."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # byte offset of the data in the file
    end: int


def _header(path: Path) -> dict[str, StoredTensor]:
    """A .safetensors file's tensors from its header: 8-byte little-endian length, then JSON."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError) as err:
        raise ModelFolderError(f"{path}: not a readable safetensors file ({err})") from None
    header.pop("__metadata__", None)
    out = {}
    for key, entry in header.items():
        if entry.get("dtype") not in SAFETENSORS_DTYPES:
            raise ModelFolderError(f"{path}: tensor {key} has unsupported dtype {entry.get('dtype')!r}")
        start, end = entry["data_offsets"]
        out[key] = StoredTensor(path, SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"]), 8 + length + start, 8 + length + end)
    return out


def stored_tensors(directory: Path) -> dict[str, StoredTensor]:
    """Every tensor of model.safetensors or of the shards its index lists (headers only)."""
    out: dict[str, StoredTensor] = {}
    for name in weight_files(directory):
        for key, stored in _header(directory / name).items():
            if key in out:
                raise ModelFolderError(f"{directory / name}: tensor {key} appears in more than one shard")
            out[key] = stored
    return out


READ_BLOCK_BYTES = 64 << 20  # a dtype conversion or a device copy goes through blocks of this size


def _read_into(f, stored: StoredTensor, target: torch.Tensor) -> None:
    """Copy one stored tensor's bytes into ``target`` (contiguous; any dtype / device). Same dtype on
    the CPU: read straight into its memory; otherwise block by block, so no whole temporary copy."""
    flat = target.view(-1)  # parameters and their dim-0 pieces are contiguous
    f.seek(stored.start)
    if flat.numel() == 0:
        return
    if stored.dtype == target.dtype and target.device.type == "cpu":
        view = memoryview(flat.view(torch.uint8).numpy())
        if f.readinto(view) != len(view):
            raise ModelFolderError(f"{stored.file}: truncated (tensor data ends before byte {stored.end})")
        return
    size = torch.empty(0, dtype=stored.dtype).element_size()
    per_block = max(1, READ_BLOCK_BYTES // size)
    for begin in range(0, flat.numel(), per_block):
        count = min(per_block, flat.numel() - begin)
        buffer = bytearray(count * size)
        if f.readinto(buffer) != len(buffer):
            raise ModelFolderError(f"{stored.file}: truncated (tensor data ends before byte {stored.end})")
        flat[begin : begin + count].copy_(torch.frombuffer(buffer, dtype=stored.dtype))


@torch.no_grad()
def load_state_into(model: torch.nn.Module, directory: str | Path) -> None:
    """Load a published-layout (or our own) safetensors checkpoint into ``model`` (strict), shard by
    shard and tensor by tensor straight into the model's own parameters (their dtype and device):
    beside the model, at most one block of READ_BLOCK_BYTES is held in memory (none without a dtype change)."""
    directory = Path(directory)
    state = model.state_dict(keep_vars=True)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    stored = stored_tensors(directory)
    assigned, missing, unexpected = resolve_published_keys(stored, shapes)
    bad_shape = [
        f"{raw}: {stored[raw].shape} != {piece_shape(shapes[ours], i, n)}"
        for raw, (ours, i, n) in assigned.items()
        if stored[raw].shape != piece_shape(shapes[ours], i, n)
    ]
    _check_complete(str(directory), missing, unexpected, bad_shape)
    for file in sorted({s.file for s in stored.values()}):
        with open(file, "rb") as f:
            for raw in sorted((k for k in assigned if stored[k].file == file), key=lambda k: stored[k].start):
                ours, index, pieces = assigned[raw]
                target = state[ours].data
                if index >= 0 and pieces > 1:
                    target = target.chunk(pieces, dim=0)[index]
                _read_into(f, stored[raw], target)
    alias_source = OURS_SAM2 + "shared_image_embedding.positional_embedding"
    if TIED_ALIAS in state and state[TIED_ALIAS] is not state[alias_source]:
        state[TIED_ALIAS].data.copy_(state[alias_source].data)

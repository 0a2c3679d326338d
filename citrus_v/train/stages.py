"""Training stages as data: which parts train, on what mixture, with what schedule.

The four published stages (DESIGN §3) are :data:`STAGES`; their hyper-parameters are the
published 8B ones. :func:`tiny_variant` gives the CPU schedule (higher lr, few steps) used by
tests and by ``citrus-v train --config tiny``. A stage can also be read from a JSON or YAML
file (``configs/train/stage*.json``) with :func:`load_stage_config`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citrus_v.config import get_preset
from citrus_v.errors import UserError

# The freeze-by-named-part vocabulary of CitrusV (docs/ARCHITECTURE.md).
MLLM_PARTS = ("vision_encoder", "merger", "llm", "lm_head")
SEG_PARTS = ("seg_projector", "sam2_image_encoder", "sam2_prompt_encoder", "sam2_mask_decoder")
# SAM2's video-memory modules get no gradient on single images; the published stages leave
# them out (training them would only add untouched parameters to the trainable count).
# reading_head exists only while a stage's token_reading is on (its head always trains then); naming it
# here lets part_lr_scale set its learning rate
PART_NAMES = MLLM_PARTS + SEG_PARTS + ("sam2_memory", "reading_head")

TASK_PREFIX = "task:"  # a mixture source "task:caption" selects records by their `task`

# What a stage's loss reads (each has its objective module and its dataset):
#   lm_mask      the MLLM's records: LM + [SEG] mask terms (objectives.Objective; stages 1-4)
#   vision_dense the suite's ground truth as dense targets for the ViT + merger (stage 0, vision_warmup)
#   cached_mask  stored [SEG] states and image features: the mask terms alone (stage 4, cached_seg)
OBJECTIVES = ("lm_mask", "vision_dense", "cached_mask")


class StageConfigError(UserError, ValueError):
    """A stage config is invalid; the message names the field (and the file, when read from one)."""


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise StageConfigError(f"StageConfig.{field_name}: {message}")


@dataclass(frozen=True)
class MixtureEntry:
    """One source of a stage's data and its weight.

    ``source`` is a JSONL path (relative paths resolve against the stage file's folder) or
    ``"task:<name>"``, which selects the records of that task from the data the user passes.
    ``weight`` is how many times each record is drawn per epoch: 1.0 once, 2.0 twice,
    0.5 a seeded half.
    """

    source: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise StageConfigError(f"MixtureEntry.source: must be a non-empty string, got {self.source!r}")
        if not (isinstance(self.weight, (int, float)) and self.weight > 0):
            raise StageConfigError(f"MixtureEntry.weight: must be > 0, got {self.weight!r} for {self.source!r}")

    @property
    def task(self) -> str | None:
        return self.source[len(TASK_PREFIX) :] if self.source.startswith(TASK_PREFIX) else None


@dataclass(frozen=True)
class StageConfig:
    """Everything one training stage needs besides the model and the data files.

    Either ``max_steps`` (optimizer steps) or ``epochs`` sets the length; ``max_steps`` wins
    when both are given. One optimizer step consumes
    ``micro_batch_size * grad_accum * world_size`` records.
    """

    name: str
    stage: int
    trainable_parts: tuple[str, ...]
    mixture: tuple[MixtureEntry, ...]
    hook_grad_scale: float | None = None  # scale of the gradient through the projector output
    lr: float = 1e-5
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    max_steps: int | None = None
    epochs: float | None = 1.0
    micro_batch_size: int = 1
    grad_accum: int = 8
    max_length: int = 12288
    grad_clip: float | None = 1.0
    gradient_checkpointing: bool = True
    seed: int = 0
    save_every: int = 500  # optimizer steps between checkpoints
    keep_last: int | None = 3  # checkpoints kept on disk (None keeps all)
    log_every: int = 1
    # learning-rate multipliers by part, e.g. {"vision_encoder": 2.0}: a from-scratch vision tower
    # learns slower than the LLM beside it (parts not named keep 1.0)
    part_lr_scale: dict[str, float] = dataclasses.field(default_factory=dict)
    # the copy-attention target (citrus_v.model.copy_attention), e.g. {"layer": 2, "head": 0, "weight": 1.0}:
    # on records with meta.copy_points, that head learns to look where the answer copies from; None is off
    copy_attention: dict[str, float] | None = None
    # the token-reading target (citrus_v.model.token_reading), e.g. {"weight": 1.0}: on records with
    # meta.reading, a training-only head asks each merged image token which characters it shows; None is off
    token_reading: dict[str, float] | None = None
    objective: str = "lm_mask"  # one of OBJECTIVES

    def __post_init__(self) -> None:
        _require(isinstance(self.name, str) and bool(self.name), "name", f"must be a non-empty string, got {self.name!r}")
        _require(self.stage in (0, 1, 2, 3, 4), "stage", f"must be 0, 1, 2, 3 or 4, got {self.stage!r}")
        _require(self.objective in OBJECTIVES, "objective", f"must be one of {OBJECTIVES}, got {self.objective!r}")
        _require((self.stage == 0) == (self.objective == "vision_dense"), "objective",
                 f"stage 0 and only stage 0 is the vision_dense warm-up, got stage {self.stage} with {self.objective!r}")
        _require(len(self.trainable_parts) > 0, "trainable_parts", "must name at least one part")
        for p in self.trainable_parts:
            _require(p in PART_NAMES, "trainable_parts", f"unknown part {p!r}; parts are {PART_NAMES}")
        _require(len(set(self.trainable_parts)) == len(self.trainable_parts), "trainable_parts", "has duplicates")
        # the other objectives make their data themselves (the suite's generator, the feature cache)
        _require(len(self.mixture) > 0 or self.objective != "lm_mask", "mixture", "must list at least one source")
        for m in self.mixture:
            _require(isinstance(m, MixtureEntry), "mixture", f"entries must be MixtureEntry, got {m!r}")
        if self.hook_grad_scale is not None:
            _require(self.hook_grad_scale >= 0, "hook_grad_scale", f"must be >= 0, got {self.hook_grad_scale}")
        _require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", f"must be two values in [0, 1), got {self.betas}"
        )
        _require(self.eps > 0, "eps", f"must be > 0, got {self.eps}")
        _require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        _require(
            self.max_steps is not None or self.epochs is not None, "max_steps", "one of max_steps or epochs must be set"
        )
        if self.max_steps is not None:
            _require(self.max_steps > 0, "max_steps", f"must be > 0, got {self.max_steps}")
        if self.epochs is not None:
            _require(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        for name in ("micro_batch_size", "grad_accum", "max_length", "save_every", "log_every"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, name, f"must be an integer > 0, got {value!r}")
        if self.grad_clip is not None:
            _require(self.grad_clip > 0, "grad_clip", f"must be > 0 or null, got {self.grad_clip}")
        _require(isinstance(self.part_lr_scale, dict), "part_lr_scale", f"must be a mapping, got {self.part_lr_scale!r}")
        for part, scale in self.part_lr_scale.items():
            _require(part in PART_NAMES, "part_lr_scale", f"unknown part {part!r}; parts are {PART_NAMES}")
            _require(isinstance(scale, (int, float)) and scale > 0, "part_lr_scale", f"{part}: must be > 0, got {scale!r}")
        if self.keep_last is not None:
            _require(self.keep_last > 0, "keep_last", f"must be > 0 or null, got {self.keep_last}")
        if self.copy_attention is not None:
            c = self.copy_attention
            _require(isinstance(c, dict) and set(c) <= {"layer", "head", "weight"} and "layer" in c, "copy_attention",
                     f"must be null or {{layer, head, weight}} (head 0 and weight 1.0 by default), got {c!r}")
            _require(all(isinstance(c.get(k, 0), int) and c.get(k, 0) >= 0 for k in ("layer", "head")), "copy_attention",
                     f"layer and head must be integers >= 0, got {c!r}")
            _require(isinstance(c.get("weight", 1.0), (int, float)) and c.get("weight", 1.0) >= 0, "copy_attention",
                     f"weight must be >= 0, got {c.get('weight')!r}")
        if self.token_reading is not None:
            r = self.token_reading
            _require(isinstance(r, dict) and set(r) <= {"weight"}, "token_reading",
                     f"must be null or {{weight}} (1.0 by default), got {r!r}")
            _require(isinstance(r.get("weight", 1.0), (int, float)) and r.get("weight", 1.0) >= 0, "token_reading",
                     f"weight must be >= 0, got {r.get('weight')!r}")

    def replace(self, **changes: Any) -> StageConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["trainable_parts"] = list(self.trainable_parts)
        d["mixture"] = [{"source": m.source, "weight": m.weight} for m in self.mixture]
        d["betas"] = list(self.betas)
        d["part_lr_scale"] = dict(self.part_lr_scale)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "stage config") -> StageConfig:
        if not isinstance(data, dict):
            raise StageConfigError(f"{where}: must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StageConfigError(f"{where}: unknown field(s) {unknown}; known fields are {sorted(known)}")
        d = dict(data)
        try:
            if "trainable_parts" in d:
                d["trainable_parts"] = tuple(d["trainable_parts"])
            if "betas" in d:
                d["betas"] = tuple(d["betas"])
            if "mixture" in d:
                d["mixture"] = tuple(_mixture_entry(m, where) for m in d["mixture"])
            return cls(**d)
        except StageConfigError as e:
            raise StageConfigError(f"{where}: {e}") from None
        except TypeError as e:  # a required field missing
            raise StageConfigError(f"{where}: {e}") from None


def _mixture_entry(m: Any, where: str) -> MixtureEntry:
    if isinstance(m, str):
        return MixtureEntry(m)
    if isinstance(m, (list, tuple)) and len(m) == 2:
        return MixtureEntry(str(m[0]), float(m[1]))
    if isinstance(m, dict) and set(m) <= {"source", "weight"} and "source" in m:
        return MixtureEntry(m["source"], float(m.get("weight", 1.0)))
    raise StageConfigError(f"{where}: mixture entry {m!r} must be a source string, [source, weight] or {{source, weight}}")


# ---------------------------------------------------------------------------------------
# The published stages (DESIGN §3); hyper-parameters are the published 8B ones.

_PUBLISHED = dict(
    lr=1e-5,
    weight_decay=0.1,
    betas=(0.9, 0.999),
    warmup_steps=100,
    grad_clip=1.0,
    micro_batch_size=1,
    grad_accum=8,
    max_length=12288,
    gradient_checkpointing=True,
    epochs=1.0,
)

STAGES: dict[int, StageConfig] = {
    1: StageConfig(
        name="stage1_concept_alignment",
        stage=1,
        trainable_parts=("vision_encoder", "merger"),
        mixture=(MixtureEntry("task:caption"),),
        **_PUBLISHED,
    ),
    2: StageConfig(
        name="stage2_comprehension",
        stage=2,
        trainable_parts=MLLM_PARTS,
        mixture=tuple(MixtureEntry(f"task:{t}") for t in ("caption", "report", "detection", "document")),
        **_PUBLISHED,
    ),
    3: StageConfig(
        name="stage3_instruction_tuning",
        stage=3,
        trainable_parts=MLLM_PARTS + SEG_PARTS + ("sam2_memory",),
        hook_grad_scale=0.001,
        mixture=tuple(
            MixtureEntry(f"task:{t}")
            for t in ("vqa_closed", "vqa_open", "cot", "report", "detection", "document", "segmentation", "text")
        ),
        **_PUBLISHED,
    ),
    4: StageConfig(
        name="stage4_segmentation",
        stage=4,
        trainable_parts=SEG_PARTS,
        mixture=(MixtureEntry("task:segmentation"),),
        **_PUBLISHED,
    ),
}


# Stage 0, for models trained from scratch (citrus_v.train.vision_warmup): the ViT and merger on dense
# targets of the synthetic suite, one batch of images a step. Its schedule is the tiny model's own.
WARMUP_STAGE = StageConfig(
    name="stage0_vision_warmup", stage=0, trainable_parts=("vision_encoder", "merger"), mixture=(),
    objective="vision_dense", lr=2e-3, weight_decay=0.01, warmup_steps=40, min_lr_ratio=0.05, max_steps=1200,
    epochs=None, micro_batch_size=24, grad_accum=1, gradient_checkpointing=False, save_every=200, keep_last=2,
    seed=1,
)

# Stage 4 on cached frozen features (citrus_v.train.cached_seg): what stage 4 trains minus the image
# encoder, whose output is in the cache; a batch is a number of masks, not of records.
CACHED_STAGE4 = StageConfig(
    name="stage4_segmentation_cached", stage=4, trainable_parts=("seg_projector", "sam2_prompt_encoder", "sam2_mask_decoder"),
    mixture=(), objective="cached_mask", lr=3e-4, weight_decay=0.01, warmup_steps=100, min_lr_ratio=0.05,
    max_steps=3000, epochs=None, micro_batch_size=16, grad_accum=1, gradient_checkpointing=False, save_every=500,
    keep_last=2, seed=1,
)


def tiny_variant(stage: StageConfig, *, max_steps: int = 20) -> StageConfig:
    """The CPU schedule for tiny models: lr 1e-3, 2 warm-up steps, a fixed number of steps,
    no gradient checkpointing (the tiny model fits; checkpointing only slows CPU)."""
    return stage.replace(
        lr=1e-3,
        warmup_steps=2,
        max_steps=max_steps,
        epochs=None,
        grad_accum=2,
        max_length=1024,
        gradient_checkpointing=False,
        save_every=10,
    )


def get_stage(stage: int, preset: str = "8b") -> StageConfig:
    """Stage ``stage`` (1-4) with the schedule of ``preset`` ("8b" published, "tiny" CPU); stage 0 (the
    vision warm-up of from-scratch models) has one schedule."""
    if stage == 0:
        return WARMUP_STAGE
    if stage not in STAGES:
        raise StageConfigError(f"unknown stage {stage!r}; stages are {[0, *sorted(STAGES)]}")
    try:
        cpu_sized = get_preset(preset).cpu_sized
    except ValueError as err:
        raise StageConfigError(f"unknown schedule preset {preset!r}: {err}") from None
    return tiny_variant(STAGES[stage]) if cpu_sized else STAGES[stage]


def load_stage_config(path: str | Path, _chain: tuple[Path, ...] = ()) -> StageConfig:
    """Read a stage from a ``.json`` or ``.yaml``/``.yml`` file.

    The file may hold a full stage or ``{"base": 3, ...overrides}`` (or ``"base": "3:tiny"``)
    to start from a published stage, or ``{"base": "other_stage.json", ...}`` to start from
    another stage file. Relative mixture and base paths resolve against the file's folder.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    where = str(path)
    if path.suffix in (".yaml", ".yml"):
        import yaml  # only needed for YAML stage files

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise StageConfigError(f"{where}: invalid YAML: {e}") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise StageConfigError(f"{where}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    else:
        raise StageConfigError(f"{where}: stage files must end in .json, .yaml or .yml")
    if not isinstance(data, dict):
        raise StageConfigError(f"{where}: must hold a mapping, got {type(data).__name__}")
    if "base" in data:
        base_spec = str(data.pop("base"))
        if base_spec.endswith((".json", ".yaml", ".yml")):  # another stage file, itself possibly based on one
            base_path = (path.parent / base_spec).resolve()
            if not base_path.is_file():
                raise StageConfigError(f"{where}: field 'base': no such stage file {base_path}")
            chain = (*_chain, path.resolve())
            if base_path in chain:
                raise StageConfigError(f"{where}: field 'base': {base_spec} leads back to itself")
            base = load_stage_config(base_path, chain)
        else:
            num, _, preset = base_spec.partition(":")
            try:
                base = get_stage(int(num), preset or "8b")
            except ValueError as e:
                raise StageConfigError(f"{where}: field 'base': {e}") from None
        merged = base.to_dict()
        merged.update(data)
        data = merged
    cfg = StageConfig.from_dict(data, where=where)
    resolved = []
    for m in cfg.mixture:
        if m.task is None and not Path(m.source).is_absolute():
            m = MixtureEntry(str((path.parent / m.source).resolve()), m.weight)
        resolved.append(m)
    return cfg.replace(mixture=tuple(resolved))


def with_data_file(stage: StageConfig, data: str | Path) -> StageConfig:
    """The stage trained on one user file (``--data my.jsonl``) instead of its task mixture."""
    return stage.replace(mixture=(MixtureEntry(str(data), 1.0),))

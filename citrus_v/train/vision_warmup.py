"""Stage 0 for models trained from scratch: a dense warm-up of the ViT and merger.

The published Citrus-V starts from a pretrained Qwen2.5-VL, whose vision tower already
knows what is where. A tiny model trained from random initialisation does not, and the
caption loss of stage 1 (behind a random, frozen LLM) is too weak a signal to teach it: our
first default model learned every output format but answered closed questions at chance.

This stage gives the vision side dense targets instead, read straight off the synthetic
suite's ground truth: for every ViT patch, which named structures cover it (``liver``,
``lesion``, ``left lung`` ...; soft fractions); for every merged token, where it sits in the
image; for every image, its modality. Small linear heads on the merger's output (the tokens
the LLM reads) are trained with the ViT and merger, then dropped: only the vision weights go
on to stage 1. The samples are regenerated from the suite's seed and *train* split, so the
held-out splits stay unseen.

    citrus-v warmup-vision --data runs/default/suite/train.jsonl --seed 1 --n 12000 --steps 1200 \
        --out runs/default/stage0
"""

from __future__ import annotations

import functools
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from citrus_v.data.image_processing import ImageConfig, ImageProcessor
from citrus_v.data.phantoms.suite import SuiteConfig, make_sample
from citrus_v.model.citrus_v import CitrusV
from citrus_v.model.objectives import LossTerms
from citrus_v.train.stages import WARMUP_STAGE, StageConfig

log = logging.getLogger(__name__)

# Every structure name the suite's generators draw (synthetic organs and findings, and the
# TotalSegmentator organs as the suite names them); one occupancy channel each.
STRUCTURES: tuple[str, ...] = (
    "brain", "cyst", "heart", "kidney", "left kidney", "left lung", "lesion", "liver", "lumen",
    "nodule", "polyp", "right kidney", "right lung", "spleen", "stomach", "tumor", "ventricles",
)
MODALITIES: tuple[str, ...] = ("ct", "mr", "xray", "us", "endoscopy", "derm")


@dataclass(frozen=True)
class WarmupConfig:
    seed: int = 1  # the suite's seed: samples are the suite's train split
    n: int = 12000  # distinct training images (regenerated, documents excluded)
    n_val: int = 300  # images from the suite's val split, for the report
    size: int = 224
    steps: int = 1200
    batch_size: int = 24
    lr: float = 2e-3
    warmup_steps: int = 40
    weight_decay: float = 0.01
    position_weight: float = 1.0
    modality_weight: float = 0.2
    presence_weight: float = 1.0
    box_weight: float = 2.0
    # weight of the positive targets in the occupancy and presence BCE: a small finding covers a
    # few patches of a few images, and at 1 the heads learn to call it absent everywhere
    positive_weight: float = 1.0
    totalseg_dir: str | None = None
    workers: int = 2
    save_every: int = 200

    def __post_init__(self) -> None:
        for name in ("n", "n_val", "steps", "batch_size", "workers", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"WarmupConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "positive_weight"):
            if getattr(self, name) <= 0:
                raise ValueError(f"WarmupConfig.{name} must be > 0, got {getattr(self, name)}")


@dataclass
class DenseSet:
    """images (N, S, S, 3) uint8; occupancy (N, K, gh, gw) uint8 (fraction x 255); modality (N,);
    boxes (N, K, 4) float32, each structure's (x1, y1, x2, y2) in 0..1, NaN where it is absent."""

    images: np.ndarray
    occupancy: np.ndarray
    modality: np.ndarray
    boxes: np.ndarray

    def batch(self, rows: list[int], proc: ImageProcessor) -> dict[str, torch.Tensor]:
        """The collated batch of images ``rows``: Qwen pixel values and grids, occupancy (B, K, gh, gw)
        in 0..1, modality (B,), boxes (B, K, 4) (the recipe's collate_fn, over ``range(len(images))``)."""
        idx = np.asarray(rows)
        pv, grid = proc.qwen(list(self.images[idx]))
        return {"pixel_values": pv, "image_grid_thw": grid, "occupancy": torch.from_numpy(self.occupancy[idx]).float() / 255.0,
                "modality": torch.from_numpy(self.modality[idx]), "boxes": torch.from_numpy(self.boxes[idx])}


def occupancy_grid(masks: dict[str, np.ndarray], grid: tuple[int, int]) -> np.ndarray:
    """(K, gh, gw) uint8: the share of each ViT patch covered by each structure in STRUCTURES."""
    gh, gw = grid
    out = np.zeros((len(STRUCTURES), gh, gw), dtype=np.uint8)
    for name, mask in masks.items():
        if name not in STRUCTURES:
            raise KeyError(f"structure {name!r} has no occupancy channel; add it to STRUCTURES")
        frac = Image.fromarray(mask.astype(np.float32), mode="F").resize((gw, gh), Image.BOX)
        out[STRUCTURES.index(name)] = np.clip(np.asarray(frac) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def structure_boxes(masks: dict[str, np.ndarray]) -> np.ndarray:
    """(K, 4) float32: each structure's tight box as (x1, y1, x2, y2) fractions of the image
    (pixel edges, so a full-image mask is (0, 0, 1, 1)); NaN rows for structures not drawn."""
    out = np.full((len(STRUCTURES), 4), np.nan, dtype=np.float32)
    for name, mask in masks.items():
        ys, xs = np.nonzero(mask)
        if len(xs):
            h, w = mask.shape
            out[STRUCTURES.index(name)] = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
    return out


def _make_chunk(args: tuple[SuiteConfig, str, list[int], tuple[int, int]]) -> list[tuple]:
    cfg, split, indices, grid = args
    out = []
    for i in indices:
        s = make_sample(cfg, split, i)
        if s.modality not in MODALITIES:  # documents: no structures to map
            continue
        img = s.image if s.image.ndim == 3 else np.repeat(s.image[..., None], 3, axis=2)
        masks = s.all_masks or {}
        out.append((img, occupancy_grid(masks, grid), MODALITIES.index(s.modality), structure_boxes(masks)))
    return out


def build_dense_set(suite: SuiteConfig, split: str, n: int, grid: tuple[int, int], workers: int = 2,
                    progress: bool = True) -> DenseSet:
    """The first ``n`` non-document samples of ``split`` with their occupancy grids."""
    from tqdm import tqdm

    items: list[tuple[np.ndarray, np.ndarray, int]] = []
    start, chunk = 0, max(16, min(256, n // workers + 1))  # documents are skipped, so a round may fall short
    bar = tqdm(total=n, desc=f"dense targets ({split})", unit="img", disable=not progress)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        while len(items) < n:
            jobs = [(suite, split, list(range(start + k * chunk, start + (k + 1) * chunk)), grid) for k in range(workers * 2)]
            start += chunk * len(jobs)
            for got in pool.map(_make_chunk, jobs):
                take = got[: n - len(items)]
                items += take
                bar.update(len(take))
    bar.close()
    return DenseSet(
        images=np.stack([it[0] for it in items]),
        occupancy=np.stack([it[1] for it in items]),
        modality=np.asarray([it[2] for it in items], dtype=np.int64),
        boxes=np.stack([it[3] for it in items]),
    )


class DenseHeads(nn.Module):
    """Linear read-outs of the merged vision tokens, each token first RMS-normalised as the
    LLM's first layer reads it (so a fact counts only if its direction, not the token's size,
    carries it).

    Local: occupancy of each of the merge x merge patches a token covers, and the token's
    (row, col) in the image. Global, asked of EVERY token: which structures the image holds
    and each one's box, and the modality. The global read-outs make the ViT broadcast the
    image-level facts into all tokens, so that an LLM which has not yet learned where to look
    (its early attention is spread over tens of image tokens) can already read them.
    """

    def __init__(self, dim: int, merge: int, n_structures: int = len(STRUCTURES), n_modalities: int = len(MODALITIES)):
        super().__init__()
        self.merge = merge
        self.n_structures = n_structures
        self.occupancy = nn.Linear(dim, n_structures * merge * merge)
        self.position = nn.Linear(dim, 2)
        self.modality = nn.Linear(dim, n_modalities)
        self.presence = nn.Linear(dim, n_structures)
        self.boxes = nn.Linear(dim, n_structures * 4)

    def forward(self, tokens: torch.Tensor, grid_thw: torch.Tensor) -> dict[str, torch.Tensor]:
        """tokens (sum_i t*h*w/m^2, D) in Qwen's merged order -> per image (B) and token grid
        (th, tw): occupancy logits (B, K, gh, gw), position (B, th, tw, 2), modality logits
        (B, th, tw, M), presence logits (B, th, tw, K), boxes (B, th, tw, K, 4) in 0..1.
        All images must share one grid."""
        m = self.merge
        t, gh, gw = (int(v) for v in grid_thw[0])
        if not bool((grid_thw == grid_thw[0]).all()) or t != 1:
            raise ValueError(f"DenseHeads needs single-frame images of one size, got grids {grid_thw.tolist()}")
        b, th, tw = grid_thw.shape[0], gh // m, gw // m
        x = F.rms_norm(tokens, (tokens.shape[-1],)).reshape(b, th, tw, -1)
        occ = self.occupancy(x).reshape(b, th, tw, self.n_structures, m, m)
        occ = occ.permute(0, 3, 1, 4, 2, 5).reshape(b, self.n_structures, gh, gw)  # (B, K, gh, gw)
        return {
            "occupancy": occ,
            "position": self.position(x),
            "modality": self.modality(x),
            "presence": self.presence(x),
            "boxes": torch.sigmoid(self.boxes(x)).reshape(b, th, tw, self.n_structures, 4),
        }


def token_positions(th: int, tw: int) -> torch.Tensor:
    """(th, tw, 2): each merged token's centre as (row, col) in 0..1."""
    r = (torch.arange(th, dtype=torch.float32) + 0.5) / th
    c = (torch.arange(tw, dtype=torch.float32) + 0.5) / tw
    return torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1)


def dense_losses(out: dict[str, torch.Tensor], occupancy: torch.Tensor, modality: torch.Tensor, boxes: torch.Tensor,
                 cfg: WarmupConfig) -> dict[str, torch.Tensor]:
    """occupancy (B, K, gh, gw) in 0..1; modality (B,) long; boxes (B, K, 4), NaN rows = absent."""
    k = occupancy.shape[1]
    weighted = cfg.positive_weight != 1.0  # at 1 the plain BCE, bit for bit
    like = dict(dtype=occupancy.dtype, device=occupancy.device)  # a CPU pos_weight fails beside CUDA logits
    pos_occ = torch.full((k, 1, 1), cfg.positive_weight, **like) if weighted else None  # broadcast over (B, K, gh, gw)
    pos_pres = torch.full((k,), cfg.positive_weight, **like) if weighted else None  # over (B, th, tw, K)
    occ = F.binary_cross_entropy_with_logits(out["occupancy"], occupancy, pos_weight=pos_occ)
    th, tw = out["position"].shape[1:3]
    pos = F.mse_loss(out["position"], token_positions(th, tw).to(out["position"]).expand_as(out["position"]))
    per_token = lambda v: v[:, None, None].expand(-1, th, tw, *v.shape[1:])  # noqa: E731 - (B, ...) -> (B, th, tw, ...)
    mod = F.cross_entropy(out["modality"].flatten(0, 2), per_token(modality).flatten())
    present = ~torch.isnan(boxes[..., 0])  # (B, K)
    pres = F.binary_cross_entropy_with_logits(out["presence"], per_token(present.float()), pos_weight=pos_pres)
    have = per_token(present)  # (B, th, tw, K)
    box = F.l1_loss(out["boxes"][have], per_token(torch.nan_to_num(boxes))[have]) if bool(have.any()) else occ * 0
    total = occ + cfg.position_weight * pos + cfg.modality_weight * mod + cfg.presence_weight * pres + cfg.box_weight * box
    return {"loss": total, "occupancy_loss": occ, "position_loss": pos, "modality_loss": mod,
            "presence_loss": pres, "box_loss": box}


# stage 0's loss terms, as the recipe names them (recipe.TERM_NAMES)
DENSE_TERMS = ("occupancy", "position", "modality", "presence", "box")


class DenseWarmupObjective(nn.Module):
    """forward(batch) -> LossTerms of stage 0: ``model``'s merged vision tokens read by ``heads`` against
    the batch's dense targets, each term weighted as ``dense_losses`` adds it up. The heads are a part
    of this module, so the recipe trains, counts and checkpoints them with the model (then drops them)."""

    def __init__(self, model: CitrusV, heads: DenseHeads, cfg: WarmupConfig) -> None:
        super().__init__()
        self.model, self.heads, self.cfg = model, heads, cfg

    def forward(self, batch: dict[str, torch.Tensor], masks_in_window: int | None = None) -> LossTerms:
        grid = batch["image_grid_thw"]
        out = self.heads(vision_tokens(self.model, batch["pixel_values"], grid), grid)
        losses = dense_losses(out, batch["occupancy"], batch["modality"], batch["boxes"], self.cfg)
        c = self.cfg
        weight = {"occupancy": 1.0, "position": c.position_weight, "modality": c.modality_weight,
                  "presence": c.presence_weight, "box": c.box_weight}
        return LossTerms({n: weight[n] * losses[f"{n}_loss"] for n in DENSE_TERMS})


def vision_tokens(model: CitrusV, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """The merged vision tokens the LLM reads, (N, D)."""
    return model.mllm.model.visual(pixel_values, grid_thw=grid_thw).pooler_output


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise IoU of (..., 4) boxes (x1, y1, x2, y2)."""
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0]).clamp_min(0) * (x[..., 3] - x[..., 1]).clamp_min(0)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp_min(1e-9)


def presence_by_structure(says: np.ndarray, holds: np.ndarray, modality: np.ndarray) -> dict[str, dict]:
    """Per structure, as read from single tokens: recall = share of tokens saying "present" on images
    that hold it; specificity = share saying "absent" on images that do not but are of a modality
    where it occurs (a nodule is trivially absent from a brain MR). says (N, K) shares in 0..1,
    holds (N, K) bool, modality (N,) indices. None where there is nothing to measure."""
    out = {}
    for k, name in enumerate(STRUCTURES):
        held = holds[:, k].astype(bool)
        same_kind = np.isin(modality, modality[held]) & ~held
        out[name] = {"recall": float(says[held, k].mean()) if held.any() else None,
                     "specificity": float(1 - says[same_kind, k].mean()) if same_kind.any() else None}
    return out


@torch.no_grad()
def evaluate(model: CitrusV, heads: DenseHeads, data: DenseSet, proc: ImageProcessor, batch_size: int = 32) -> dict:
    """Per-structure IoU of the occupancy map thresholded at 0.5 (patches where the structure is
    present in the ground truth at >= 50%) and position error in tokens; and, as read from
    single tokens (mean over every token of every image): modality accuracy, presence accuracy
    over all structures, and the share of present structures whose box has IoU >= 0.5."""
    model.eval()
    inter = np.zeros(len(STRUCTURES))
    union = np.zeros(len(STRUCTURES))
    mod_ok, pres_ok, box_ok, n_tok, n_box, pos_err, n_pos = 0.0, 0.0, 0.0, 0, 0, 0.0, 0
    says_present, holds = [], []  # per image: share of tokens saying each structure is present; the truth
    for s in range(0, len(data.images), batch_size):
        pv, grid = proc.qwen(list(data.images[s:s + batch_size]))
        out = heads(vision_tokens(model, pv, grid), grid)
        pred = (out["occupancy"] > 0).numpy()
        truth = data.occupancy[s:s + batch_size] >= 128
        inter += (pred & truth).sum(axis=(0, 2, 3))
        union += (pred | truth).sum(axis=(0, 2, 3))
        th, tw = out["position"].shape[1:3]
        err = (out["position"] - token_positions(th, tw)).abs() * torch.tensor([th, tw], dtype=torch.float32)
        pos_err += float(err.sum())
        n_pos += err.numel()
        modality = torch.from_numpy(data.modality[s:s + batch_size])[:, None, None]  # (B, 1, 1)
        mod_ok += float((out["modality"].argmax(-1) == modality).sum())
        boxes = torch.from_numpy(data.boxes[s:s + batch_size])[:, None, None]  # (B, 1, 1, K, 4)
        present = ~torch.isnan(boxes[..., 0])  # (B, 1, 1, K)
        said = out["presence"] > 0  # (B, th, tw, K)
        pres_ok += float((said == present).float().mean(-1).sum())
        says_present.append(said.float().mean(dim=(1, 2)).numpy())  # (B, K)
        holds.append(present[:, 0, 0].numpy())  # (B, K)
        hit = (box_iou(out["boxes"], torch.nan_to_num(boxes)) >= 0.5) & present  # (B, th, tw, K)
        box_ok += float(hit.sum())
        n_box += int(present.sum()) * th * tw
        n_tok += out["presence"].shape[0] * th * tw
    iou = {name: (float(inter[k] / union[k]) if union[k] else None) for k, name in enumerate(STRUCTURES)}
    presence = presence_by_structure(np.concatenate(says_present), np.concatenate(holds), data.modality)
    present_iou = [v for v in iou.values() if v is not None]
    model.train()
    return {"structure_iou": iou, "mean_structure_iou": float(np.mean(present_iou)) if present_iou else None,
            "position_abs_err_tokens": pos_err / max(n_pos, 1), "modality_acc_per_token": mod_ok / max(n_tok, 1),
            "presence_acc_per_token": pres_ok / max(n_tok, 1), "box_iou50_per_token": box_ok / max(n_box, 1),
            "presence_by_structure": presence}


def warmup_stage(cfg: WarmupConfig) -> StageConfig:
    """Stage 0 (``stages.WARMUP_STAGE``) with ``cfg``'s schedule: one step is ``cfg.batch_size`` images."""
    return WARMUP_STAGE.replace(max_steps=cfg.steps, micro_batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                                warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, save_every=cfg.save_every)


def _warmup_images(model: CitrusV, cfg: WarmupConfig) -> tuple[ImageProcessor, tuple[int, int]]:
    """The processor that keeps every image at cfg.size x cfg.size, and the ViT patch grid (gh, gw)."""
    img_cfg = ImageConfig.for_model(model.config, min_pixels=cfg.size * cfg.size, max_pixels=cfg.size * cfg.size)
    proc = ImageProcessor(img_cfg)
    if proc.resized_hw(cfg.size, cfg.size) != (cfg.size, cfg.size):
        raise ValueError(f"WarmupConfig.size {cfg.size} is not a multiple of the ViT's {img_cfg.factor}-pixel unit")
    return proc, (cfg.size // img_cfg.patch_size, cfg.size // img_cfg.patch_size)


def run_warmup(cfg: WarmupConfig, out_dir: str | Path, *, data_files: Sequence[str | Path], init: str | Path | None = None,
               preset: str = "tiny", progress: bool = True, resume: bool = False) -> dict:
    """Train ViT + merger on dense targets with the one training loop (``recipe.train``, stage
    ``warmup_stage(cfg)``); write ``out_dir/final`` (a complete model folder, vision updated), the
    recipe's ``metrics.jsonl``, ``loss_curve.png`` and ``checkpoints/`` (model + heads, optimizer,
    scheduler, data position, RNG: ``resume=True`` continues bit-exactly, and a different
    ``cfg.steps`` re-lays the schedule or is refused as for any stage), and ``warmup_eval.json``
    (val split, before and after). Without ``init`` the model and its tokenizer are made as stage 1
    would make them from ``data_files`` (the tiny BPE is trained on their text). Returns the report."""
    from citrus_v.train.pipeline import init_model_and_template, write_model_folder
    from citrus_v.train.recipe import train
    from citrus_v.train.stages import get_stage

    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    model, tokenizer, template = init_model_and_template(init, preset, get_stage(1, preset), data_files)
    proc, grid = _warmup_images(model, cfg)
    suite = SuiteConfig(seed=cfg.seed, size=cfg.size, totalseg_dir=Path(cfg.totalseg_dir) if cfg.totalseg_dir else None)
    t0 = time.time()
    data = build_dense_set(suite, "train", cfg.n, grid, cfg.workers, progress)
    val = build_dense_set(suite, "val", cfg.n_val, grid, cfg.workers, progress)
    log.info("dense targets: %d train / %d val images in %.0f s", len(data.images), len(val.images), time.time() - t0)
    objective = DenseWarmupObjective(model, DenseHeads(model.config.llm.hidden_size, proc.cfg.merge_size), cfg)
    before = evaluate(model, objective.heads, val, proc)  # the fresh model, so a resumed run gets the same
    train(warmup_stage(cfg), model, range(len(data.images)), functools.partial(data.batch, proc=proc), out_dir,
          resume=resume, progress=progress, objective=objective)
    objective.cpu()  # evaluated and saved on the CPU, wherever it trained
    after = evaluate(model, objective.heads, val, proc)
    write_model_folder(model, tokenizer, out_dir / "final", template.image_cfg)
    report = {"config": asdict(cfg), "val_before": before, "val_after": after, "seconds": round(time.time() - t0, 1)}
    (out_dir / "warmup_eval.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def format_report(report: dict) -> str:
    lines = ["structure        IoU before  IoU after  presence recall / specificity after (single tokens)"]
    nan = float("nan")
    for name in STRUCTURES:
        b, a = report["val_before"]["structure_iou"][name], report["val_after"]["structure_iou"][name]
        if a is None:
            continue
        pres = report["val_after"]["presence_by_structure"][name]
        rec, spec = (nan if pres[k] is None else pres[k] for k in ("recall", "specificity"))
        lines.append(f"{name:<16} {b if b is not None else nan:10.3f} {a:10.3f}  {rec:6.3f} / {spec:.3f}")
    for key in ("mean_structure_iou", "position_abs_err_tokens", "modality_acc_per_token", "presence_acc_per_token",
                "box_iou50_per_token"):
        lines.append(f"{key:<26} {report['val_before'][key]:.3f} -> {report['val_after'][key]:.3f}")
    return "\n".join(lines)


def add_arguments(p) -> None:  # noqa: ANN001
    from citrus_v.config import PRESETS

    d = WarmupConfig()
    p.add_argument("--data", required=True, type=Path, action="append",
                   help="the suite's training JSONL: the tiny tokenizer is trained on its text (as stage 1 would)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--init", type=Path, default=None, help="model folder to start from (default: a fresh --config model)")
    p.add_argument("--config", default="tiny", choices=sorted(name for name, preset in PRESETS.items() if preset.cpu_sized))
    p.add_argument("--seed", type=int, default=d.seed, help="the suite seed (samples are its train split)")
    p.add_argument("--n", type=int, default=d.n)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--positive-weight", type=float, default=d.positive_weight,
                   help="weight of positive occupancy/presence targets (> 1 for small, rare findings)")
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--totalseg-dir", default=None)
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint interval in steps")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:  # noqa: ANN001
    """``citrus-v warmup-vision``: ``citrus-v train --stage 0`` with the warm-up's own data flags."""
    cfg = WarmupConfig(seed=args.seed, n=args.n, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       positive_weight=args.positive_weight, size=args.size, workers=args.workers,
                       totalseg_dir=args.totalseg_dir, save_every=args.save_every)
    return _run(cfg, args)


def run_train_cli(args) -> int:  # noqa: ANN001
    """``citrus-v train --stage 0``: the warm-up's data at WarmupConfig's defaults; --steps, --lr and
    --save-every set its schedule."""
    from citrus_v.config import PRESETS

    given = [flag for flag, value in (("--val", args.val), ("--epochs", args.epochs), ("--stage-config", args.stage_config),
                                      ("--lora", args.lora), ("--time-budget-min", args.time_budget_min)) if value]
    if given:
        raise SystemExit(f"--stage 0 (the vision warm-up) does not take {', '.join(given)}")
    if not PRESETS[args.config].cpu_sized:
        raise SystemExit(f"--stage 0 warms up a model trained from scratch: --config {args.config} starts from a pretrained one")
    d = WarmupConfig()
    cfg = WarmupConfig(steps=args.steps or d.steps, lr=args.lr or d.lr, save_every=args.save_every or d.save_every)
    return _run(cfg, args)


def _run(cfg: WarmupConfig, args) -> int:  # noqa: ANN001
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.init is not None and not (args.init / "config.json").is_file():
        raise SystemExit(f"{args.init}: --init must be a model folder (config.json + model.safetensors)")
    for f in args.data:
        if not f.is_file():
            raise SystemExit(f"{f}: no such data file")
    report = run_warmup(cfg, args.out, data_files=args.data, init=args.init, preset=args.config,
                        progress=not args.no_progress, resume=args.resume)
    print(format_report(report))
    print(f"model: {args.out / 'final'}; report: {args.out / 'warmup_eval.json'}")
    return 0

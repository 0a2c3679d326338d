"""Probe: can a model's ViT + merger learn to read a lab page from dense targets?

``--target values``: every merged token is asked for the page's values (as stage 0 asks every
token for image-level facts). A linear head on each RMS-normalised merged token predicts, for each
of the seven analytes the document generator draws, whether its row is on the page and the value's
characters (four slots of 0-9, '.' or padding); validation reads the token-mean logits.

``--target glyphs``: each token is asked only what it sees: for each of the ViT patches it merges,
which of the characters 0-9 and '.' have a glyph there (at least MIN_PIXELS pixels). Validation:
F1 over (patch, character) pairs, and the share of patches holding characters whose set is exact.

ViT + merger + head train together. Pages come from ``citrus_v.data.phantoms.document.render``
with their own seeds (not the suite's). Used to decide whether a dense reading target is a cheap way
to the document bar of issue 5 (docs/default_model.md).

    python scripts/probe_doc_reading.py --init runs/default/stage3b/final --steps 600 --out probe.json
    python scripts/probe_doc_reading.py --init runs/default/stage3b/final --target glyphs --steps 600 --out glyphs.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from citrus_v.data.image_processing import ImageConfig, ImageProcessor
from citrus_v.data.phantoms import document
from citrus_v.train.pipeline import init_model_and_template
from citrus_v.train.stages import get_stage
from citrus_v.train.vision_warmup import vision_tokens

CHARS = "0123456789."
PAD = len(CHARS)  # the class of an empty slot
SLOTS = 4  # the longest value is "17.9"
NAMES = [a.name for a in document.ANALYTES]
SIZE = 224
MIN_PIXELS = 3  # glyph pixels for a character to count as "in" a patch


def make_pages(n: int, seed: int, glyphs_too: bool, patch: int = 14, merge: int = 2) -> tuple[np.ndarray, ...]:
    """images (n, S, S, 3) uint8, presence (n, A) float32, chars (n, A, SLOTS) long, and with
    ``glyphs_too`` glyphs (n, T, merge^2, len(CHARS)) float32 (else None: rendering each
    character's label map is the slow part, and only --target glyphs reads it)."""
    rng = np.random.default_rng(seed)
    images, glyphs, presence = [], [], np.zeros((n, len(NAMES)), np.float32)
    chars = np.full((n, len(NAMES), SLOTS), PAD, np.int64)
    for i in range(n):
        page = document.render(rng, SIZE)
        images.append(page.image)
        if glyphs_too:
            glyphs.append(document.patch_characters(document.glyph_labels(page, CHARS), len(CHARS), patch, merge, MIN_PIXELS))
        for name, value in page.values.items():
            k = NAMES.index(name)
            presence[i, k] = 1
            for j, c in enumerate(value.split(" ")[0][:SLOTS]):
                chars[i, k, j] = CHARS.index(c)
    return np.stack(images), presence, chars, np.stack(glyphs) if glyphs_too else None


class ReadingHead(nn.Module):
    def __init__(self, dim: int, merge: int) -> None:
        super().__init__()
        self.dim, self.merge = dim, merge
        self.presence = nn.Linear(dim, len(NAMES))
        self.chars = nn.Linear(dim, len(NAMES) * SLOTS * (PAD + 1))
        self.glyphs = nn.Linear(dim, merge * merge * len(CHARS))

    def forward(self, tokens: torch.Tensor, n_images: int) -> dict[str, torch.Tensor]:
        """tokens (n_images * T, D) -> presence logits (B, T, A), char logits (B, T, A, SLOTS, PAD + 1),
        glyph logits (B, T, merge^2, len(CHARS))."""
        x = F.rms_norm(tokens, (self.dim,)).reshape(n_images, -1, self.dim)  # (B, T, D)
        b, t = x.shape[:2]
        return {"presence": self.presence(x), "chars": self.chars(x).reshape(b, t, len(NAMES), SLOTS, PAD + 1),
                "glyphs": self.glyphs(x).reshape(b, t, self.merge * self.merge, len(CHARS))}


def values_loss(out: dict[str, torch.Tensor], presence: torch.Tensor, chars: torch.Tensor) -> torch.Tensor:
    """Every token is asked each analyte's presence and, where present, its value's characters."""
    pres_logits, char_logits = out["presence"], out["chars"]
    t = pres_logits.shape[1]
    ask = (presence > 0)[:, None, :].expand(-1, t, -1)  # (B, T, A): every token, rows on the page
    l_pres = F.binary_cross_entropy_with_logits(pres_logits, presence[:, None].expand_as(pres_logits))
    l_chars = F.cross_entropy(char_logits[ask].reshape(-1, PAD + 1), chars[:, None].expand(-1, t, -1, -1)[ask].reshape(-1))
    return l_pres + l_chars


@torch.no_grad()
def values_scores(out: dict[str, torch.Tensor], presence: torch.Tensor, chars: torch.Tensor) -> dict[str, float]:
    """Sums over a batch (token-mean read-out): exact values, right characters, presence accuracy; and counts."""
    pres_logits, char_logits = out["presence"].mean(1), out["chars"].mean(1)
    present = presence > 0  # (B, A)
    pred = char_logits.argmax(-1)  # (B, A, SLOTS)
    return {"exact": float(((pred == chars).all(-1) & present).sum()),
            "chars_ok": float(((pred == chars) & present[..., None]).sum()),
            "presence_ok": float(((pres_logits > 0) == present).float().mean(-1).sum()),
            "n_values": float(present.sum()), "n_pages": float(len(presence))}


@torch.no_grad()
def glyph_scores(out: dict[str, torch.Tensor], glyphs: torch.Tensor) -> dict[str, float]:
    """Sums over a batch: true/false positives and negatives over (patch, character), exact sets."""
    pred, truth = out["glyphs"] > 0, glyphs > 0  # (B, T, m^2, C)
    inked = truth.any(-1)  # patches holding at least one character
    return {"tp": float((pred & truth).sum()), "fp": float((pred & ~truth).sum()), "fn": float((~pred & truth).sum()),
            "sets_exact": float(((pred == truth).all(-1) & inked).sum()), "inked": float(inked.sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", required=True, type=Path, help="model folder whose ViT + merger are probed")
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--n-val", type=int, default=300)
    p.add_argument("--target", choices=["values", "glyphs"], default="values")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()

    torch.manual_seed(0)
    t0 = time.time()
    glyphs_too = args.target == "glyphs"
    train, val = make_pages(args.n_train, 1001, glyphs_too), make_pages(args.n_val, 2002, glyphs_too)
    model, _, _ = init_model_and_template(args.init, "tiny", get_stage(1, "tiny"), [])
    model.set_trainable(["vision_encoder", "merger"])
    model.train()
    proc = ImageProcessor(ImageConfig.for_model(model.config, min_pixels=SIZE * SIZE, max_pixels=SIZE * SIZE))
    merge = model.config.vision.spatial_merge_size
    head = ReadingHead(model.config.llm.hidden_size, merge)

    def forward(images: np.ndarray) -> dict[str, torch.Tensor]:
        pv, grid = proc.qwen(list(images))
        return head(vision_tokens(model, pv, grid), len(images))

    def loss_on(idx: np.ndarray, data: tuple[np.ndarray, ...]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        out = forward(data[0][idx])
        if args.target == "values":
            return out, values_loss(out, torch.from_numpy(data[1][idx]), torch.from_numpy(data[2][idx]))
        glyphs = torch.from_numpy(data[3][idx])  # (B, T, m^2, C)
        return out, F.binary_cross_entropy_with_logits(out["glyphs"], glyphs)

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        model.eval()
        sums: dict[str, float] = {}
        for s in range(0, len(val[0]), 50):
            idx = np.arange(s, min(s + 50, len(val[0])))
            out = forward(val[0][idx])
            got = (values_scores(out, torch.from_numpy(val[1][idx]), torch.from_numpy(val[2][idx])) if args.target == "values"
                   else glyph_scores(out, torch.from_numpy(val[3][idx])))
            for k, v in got.items():
                sums[k] = sums.get(k, 0.0) + v
        model.train()
        if args.target == "values":
            return {"value_exact": sums["exact"] / sums["n_values"], "char_acc": sums["chars_ok"] / (sums["n_values"] * SLOTS),
                    "presence_acc": sums["presence_ok"] / sums["n_pages"]}
        precision = sums["tp"] / max(sums["tp"] + sums["fp"], 1.0)
        recall = sums["tp"] / max(sums["tp"] + sums["fn"], 1.0)
        return {"glyph_precision": precision, "glyph_recall": recall,
                "glyph_f1": 2 * precision * recall / max(precision + recall, 1e-9),
                "inked_patch_sets_exact": sums["sets_exact"] / max(sums["inked"], 1.0)}

    before = evaluate()
    print("before", before, flush=True)
    params = [q for q in model.parameters() if q.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    rng = np.random.default_rng(0)
    losses, curve = [], []
    for step in range(1, args.steps + 1):
        _, loss = loss_on(rng.choice(len(train[0]), args.batch_size, replace=False), train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(round(float(loss.detach()), 4))
        if step % 300 == 0 or step == args.steps:
            curve.append({"step": step, "loss_last100": float(np.mean(losses[-100:])), **evaluate()})
            print(curve[-1], f"{time.time() - t0:.0f} s", flush=True)
    report = {"init": str(args.init), "target": args.target, "steps": args.steps, "batch_size": args.batch_size,
              "lr": args.lr, "n_train": args.n_train, "n_val": args.n_val, "before": before, "curve": curve,
              "loss": losses, "seconds": round(time.time() - t0, 1)}
    args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()

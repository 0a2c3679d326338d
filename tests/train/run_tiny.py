"""Subprocess entry for the SIGKILL-resume and torchrun tests: train the tiny model on the
synthetic data. ``python -m tests.train.run_tiny OUT --steps N ...`` (run from the repo root)."""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--stage", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--save-every", type=int, default=2)
    ap.add_argument("--micro", type=int, default=1)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--strategy", default="none")
    ap.add_argument("--token-reading", action="store_true", help="token-reading target on; even samples labelled")
    ap.add_argument("--seg-every", type=int, default=1, help="only every k-th sample asks for a mask")
    ap.add_argument("--step-delay", type=float, default=0.0, help="sleep per micro-batch, to leave time to kill")
    args = ap.parse_args()

    torch.set_num_threads(1)
    from citrus_v.train.distributed import init_distributed, shutdown
    from citrus_v.train.recipe import train
    from citrus_v.train.stages import get_stage
    from tests.train.synthetic import collate, make_dataset, tiny_model

    ctx = init_distributed(args.strategy)
    stage = get_stage(args.stage, "tiny").replace(
        max_steps=args.steps, save_every=args.save_every, micro_batch_size=args.micro, grad_accum=args.accum, keep_last=None,
        token_reading={"weight": 1.0} if args.token_reading else None,
    )

    def slow_collate(items):  # noqa: ANN001, ANN202
        time.sleep(args.step_delay)
        return collate(items)

    result = train(stage, tiny_model(0), make_dataset(args.samples, seg_every=args.seg_every, with_reading=args.token_reading), slow_collate, args.out, resume=args.resume,
                   dist_ctx=ctx, progress=False, device="cpu")
    if ctx.is_main:
        print(json.dumps({"losses": result.losses, "steps": result.steps, "final": str(result.final_dir),
                          "skipped": result.skipped_micro_batches}))
    shutdown(ctx)


if __name__ == "__main__":
    main()

"""Subprocess entry for the chaos test: stages 1-4 of the tiny model on a phantom suite, two steps
each with a checkpoint every step. ``--kill-at PHASE:N`` kill -9s the process the N-th time a save
passes PHASE (checkpointing.SAVE_PHASES), so the kill lands at an exact point of the save.

    python -m tests.train.run_chaos OUT --suite train.jsonl [--kill-at checkpoint:renamed:3] [--resume]
"""

from __future__ import annotations

import argparse
import os
import signal

import torch


def _kill_at(spec: str) -> None:
    from citrus_v.train import checkpointing

    phase, nth = spec.rsplit(":", 1)
    seen = [0]

    def hook(passed: str) -> None:
        if passed == phase:
            seen[0] += 1
            if seen[0] == int(nth):
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as a power cut or the OOM killer

    checkpointing.on_phase = hook


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--suite", required=True)
    ap.add_argument("--kill-at", default=None)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(1)
    from citrus_v.train.pipeline import run_all_stages
    from citrus_v.train.stages import get_stage, with_data_file

    if args.kill_at:
        _kill_at(args.kill_at)
    stages = [with_data_file(get_stage(k, "tiny"), args.suite).replace(max_steps=2, grad_accum=1, save_every=1,
                                                                       warmup_steps=1, keep_last=1)
              for k in (1, 2, 3, 4)]
    run_all_stages(stages, data_files=[args.suite], out_dir=args.out, progress=False, resume=args.resume)


if __name__ == "__main__":
    main()

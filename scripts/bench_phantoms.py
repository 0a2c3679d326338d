"""Samples per second of the synthetic suite on one core (numpy + PIL, no torch).

    python scripts/bench_phantoms.py [--size 256] [--n 400] [--write]

Reports in-memory generation (render + text + boxes) and, with --write, generation plus PNG
encoding and JSONL writing through generate_suite (one worker).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: numpy's BLAS stays single-threaded
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="also time writing PNG + JSONL to a temp folder")
    args = ap.parse_args()

    from citrus_v.data.phantoms.suite import SuiteConfig, generate_suite, make_sample

    cfg = SuiteConfig(seed=args.seed, size=args.size)
    make_sample(cfg, "train", 0)  # warm caches (grids, fonts, totalseg volumes) outside the timing
    t0 = time.perf_counter()
    for i in range(args.n):
        make_sample(cfg, "train", i)
    dt = time.perf_counter() - t0
    print(f"generate in memory: {args.n / dt:.1f} samples/s ({args.size} px, {args.n} samples, one process)")
    if args.write:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            generate_suite(tmp, args.n, 0, 0, seed=args.seed, size=args.size, progress=False)
            dt = time.perf_counter() - t0
        print(f"generate + write PNG/JSONL: {args.n / dt:.1f} samples/s ({args.size} px, one worker)")


if __name__ == "__main__":
    main()

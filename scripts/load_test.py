#!/usr/bin/env python
"""Load-test a running ``citrus-v serve`` on THIS machine: N concurrent chat requests with one image.

Bounded on purpose: loopback addresses only, at most 1024 requests, at most 600 s. Prints throughput,
p50/p95 latency, failures and the server's peak memory before/after (from /readyz).

    python scripts/load_test.py --url http://127.0.0.1:8000 --requests 64
    python scripts/load_test.py --url http://127.0.0.1:8000 --requests 64 --bomb-side 6000 \
        --server-pid PID --json-out benchmarks/serve_bomb_flood.json

``--bomb-side N`` floods with N x N PNGs of zeros (a 6000 x 6000 one is ~35 KB on the wire, 108 MB as
RGB): the server must answer each with 200, 413 or 429 (its pixel budget), never 5xx, and its peak RSS
shows what the budget bounds. ``--server-pid`` reads that peak from the kernel (``/proc/PID/status``
VmHWM, the high-water mark of resident memory) before and after; ``--json-out`` writes every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
from pathlib import Path
import statistics
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
MAX_REQUESTS = 1024
MAX_SECONDS = 600.0


@dataclass
class LoadResult:
    requests: int
    failures: int
    wall_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    server_before: dict = field(default_factory=dict)
    server_after: dict = field(default_factory=dict)
    proc_before: dict = field(default_factory=dict)  # /proc/PID/status of the server: VmHWM/VmRSS in MB
    proc_after: dict = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return (self.requests - self.failures) / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        return float(np.percentile(self.latencies_s, q))

    def summary(self) -> str:
        lines = [
            f"requests {self.requests}  failures {self.failures}  statuses {dict(sorted(self.statuses.items()))}",
            f"wall {self.wall_s:.2f} s  throughput {self.throughput:.2f} req/s",
            f"latency p50 {self.percentile(50) * 1000:.0f} ms  p95 {self.percentile(95) * 1000:.0f} ms"
            f"  mean {statistics.fmean(self.latencies_s) * 1000 if self.latencies_s else float('nan'):.0f} ms",
        ]
        for name, snap in (("before", self.server_before), ("after", self.server_after)):
            if snap:
                lines.append(f"server {name}: max_rss_mb {snap.get('max_rss_mb')}  batches {snap.get('batches')}"
                             f"  largest_batch {snap.get('largest_batch')}  queue {snap.get('queue')}"
                             f"  peak_pixels_in_flight {snap.get('peak_pixels_in_flight')}")
        for name, snap in (("before", self.proc_before), ("after", self.proc_after)):
            if snap:
                lines.append(f"server /proc {name}: VmHWM {snap['VmHWM_mb']} MB  VmRSS {snap['VmRSS_mb']} MB")
        lines.extend(f"error: {e}" for e in self.errors[:5])
        return "\n".join(lines)


def proc_memory(pid: int) -> dict:
    """The server's resident memory now and its high-water mark (MB), from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[f"{key}_mb"] = round(int(value.split()[0]) / 1024.0, 1)  # the kernel reports kB
    return fields


def proc_command(pid: int) -> str:
    """The server's own command line (which flags it was started with), from /proc/PID/cmdline."""
    return " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")).strip()


def as_json(result: LoadResult, args: argparse.Namespace) -> dict:
    """Every figure of a run and the command that made it (for benchmarks/)."""
    return {
        "command": "python scripts/load_test.py " + " ".join(sys.argv[1:]),
        "server_command": proc_command(args.server_pid) if args.server_pid else None,
        "requests": result.requests, "failures": result.failures, "statuses": result.statuses,
        "wall_s": round(result.wall_s, 2), "latency_p50_s": round(result.percentile(50), 3),
        "latency_p95_s": round(result.percentile(95), 3), "bomb_side": args.bomb_side,
        "server_readyz_before": result.server_before, "server_readyz_after": result.server_after,
        "server_proc_before": result.proc_before, "server_proc_after": result.proc_after,
        "errors": result.errors[:20],
    }


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"--url: load tests only target this machine ({sorted(LOOPBACK_HOSTS)}), got host {host!r}")


def png_data_url(size: int, seed: int = 0, zeros: bool = False) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (size, size, 3)
    arr = np.zeros(shape, dtype=np.uint8) if zeros else rng.integers(0, 256, size=shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=zeros)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


BUDGET_REFUSALS = (413, 429)  # the server's pixel budget said no: the expected answer to a flood of bombs


async def run_load(
    url: str, requests: int, concurrency: int | None = None, timeout_s: float = 120.0, image_size: int = 64,
    prompt: str = "Please segment the lesion.", max_tokens: int = 16, api_key: str | None = None,
    bomb_side: int | None = None, server_pid: int | None = None,
) -> LoadResult:
    import httpx

    check_loopback(url)
    if not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"--requests: must be in [1, {MAX_REQUESTS}], got {requests}")
    if not 0 < timeout_s <= MAX_SECONDS:
        raise ValueError(f"--timeout-s: must be in (0, {MAX_SECONDS}], got {timeout_s}")
    if bomb_side is not None and not 1 <= bomb_side <= 20_000:
        raise ValueError(f"--bomb-side: must be in [1, 20000], got {bomb_side}")
    concurrency = concurrency or requests
    url_of_image = png_data_url(bomb_side, zeros=True) if bomb_side else png_data_url(image_size)
    body = {
        "model": "citrus-v",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url_of_image}}, {"type": "text", "text": prompt}]}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    result = LoadResult(requests=requests, failures=0, wall_s=0.0)
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits, headers=headers) as client:
        result.server_before = (await client.get("/readyz")).json()
        result.proc_before = proc_memory(server_pid) if server_pid else {}

        async def one(i: int) -> None:
            async with gate:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/chat/completions", json=body)
                    status = r.status_code
                    ok = (status == 200 and "seg_masks_rle" in r.json()) or (bool(bomb_side) and status in BUDGET_REFUSALS)
                    if not ok:
                        result.errors.append(f"request {i}: HTTP {status} {r.text[:200]}")
                except httpx.HTTPError as err:
                    status, ok = 0, False
                    result.errors.append(f"request {i}: {type(err).__name__}: {err}")
                result.latencies_s.append(time.perf_counter() - t0)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                result.failures += 0 if ok else 1

        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(requests))), timeout_s)
        except asyncio.TimeoutError:
            result.errors.append(f"stopped after --timeout-s={timeout_s}")
            result.failures = requests - sum(n for s, n in result.statuses.items() if s == 200)
        result.wall_s = time.perf_counter() - t0
        result.server_after = (await client.get("/readyz")).json()
        result.proc_after = proc_memory(server_pid) if server_pid else {}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=None, help="default: all requests at once")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--bomb-side", type=int, default=None,
                        help="send N x N PNGs of zeros instead (a flood of decompression-bomb-like requests)")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="the server's process id: its peak resident memory (VmHWM) is read from /proc")
    parser.add_argument("--json-out", type=Path, default=None, help="also write every figure (and the command) here")
    args = parser.parse_args(argv)
    if args.server_pid is not None and not Path(f"/proc/{args.server_pid}/status").is_file():
        print(f"error: --server-pid {args.server_pid}: no such process on this machine", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(run_load(args.url, args.requests, args.concurrency, args.timeout_s, args.image_size,
                                      max_tokens=args.max_tokens, api_key=args.api_key, bomb_side=args.bomb_side,
                                      server_pid=args.server_pid))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(as_json(result, args), indent=2) + "\n")
    return 0 if result.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

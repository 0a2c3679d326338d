"""Peak resident memory while loading a published-layout checkpoint (issue 20 point 5).

Writes a synthetic checkpoint in the published layout (flat config.json naming sam2_hiera_l.yaml,
published tensor names, shards + model.safetensors.index.json, random bfloat16 weights) to a
folder of your choice (never the repository), then loads it with ``CitrusV.from_pretrained`` in
a FRESH subprocess per dtype and prints one JSON object: the weights' bytes in that dtype, the
subprocess's resident memory before loading (after imports) and its peak (VmHWM), and the ratios.

The synthetic model keeps the 8B's vocabulary (152,064: its embedding and head are the largest
tensors), its SAM2-L and its token ids, with fewer and narrower layers so that it is a few GB::

    python benchmarks/bench_load_memory.py --dir /tmp/citrus_v_synthetic --dtype bfloat16 --dtype float16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # this checkout's citrus_v, for the parent and the child
sys.path.insert(0, str(REPO))
SHARD_BYTES = 400 << 20  # shards of about this size (the released 8B: about 4 GB each)


def synthetic_config():
    """The 8b preset with 3 LLM layers of width 2048 and an 8-block ViT (about 1.3 B parameters)."""
    from citrus_v.config import citrus_v_8b_config

    config = citrus_v_8b_config()
    config.llm = replace(config.llm, hidden_size=2048, intermediate_size=11008, num_hidden_layers=3,
                         num_attention_heads=16, num_key_value_heads=2, mrope_section=[16, 24, 24])
    config.vision = replace(config.vision, depth=8, fullatt_block_indexes=[3, 7])
    return config


def write_checkpoint(directory: Path, seed: int = 0) -> dict:
    """Random bf16 weights under the published names, shard by shard (one shard in memory at a time)."""
    import torch
    from safetensors.torch import save_file

    from citrus_v.model.checkpoint import TIED_ALIAS, published_names
    from citrus_v.model.citrus_v import CitrusV
    from citrus_v.model.loading import published_config_dict

    config = synthetic_config()
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in CitrusV(config).state_dict().items()}
    entries = []  # (published name, shape, is_float)
    for key, names in published_names(shapes).items():
        if key == TIED_ALIAS:
            continue
        shape = shapes[key]
        part = (shape[0] // len(names), *shape[1:]) if len(names) > 1 else shape
        entries += [(name, part, not key.endswith("position_ids")) for name in names]
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    weight_map, shard, shard_bytes, total = {}, {}, 0, 0

    def flush():
        nonlocal shard, shard_bytes
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard, shard_bytes = {}, 0

    for name, shape, is_float in entries:
        tensor = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16) if is_float else torch.zeros(shape, dtype=torch.long)
        shard[name] = tensor
        shard_bytes += tensor.numel() * tensor.element_size()
        total += tensor.numel() * tensor.element_size()
        if shard_bytes >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(published_config_dict(config)))
    return {"checkpoint_bytes": total, "shards": len(set(weight_map.values())), "tensors": len(weight_map)}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(directory: Path, dtype_name: str) -> dict:
    """In THIS process (started fresh for it): load the folder into ``dtype`` and report memory."""
    import torch

    torch.set_num_threads(1)
    from citrus_v.model.citrus_v import CitrusV
    from citrus_v.model.loading import published_config

    config = published_config(json.loads((directory / "config.json").read_text()))
    before_kib = _status_kib("VmRSS")
    start = time.perf_counter()
    model = CitrusV.from_pretrained(directory, config=config, dtype=getattr(torch, dtype_name))
    seconds = time.perf_counter() - start
    peak_kib = _status_kib("VmHWM")
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    gib = 1024**3
    return {
        "dtype": dtype_name,
        "weights_gib": round(weights / gib, 3),
        "rss_before_load_gib": round(before_kib * 1024 / gib, 3),
        "peak_rss_gib": round(peak_kib * 1024 / gib, 3),
        "peak_over_weights": round(peak_kib * 1024 / weights, 3),
        "load_increase_over_weights": round((peak_kib - before_kib) * 1024 / weights, 3),
        "load_seconds": round(seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True, help="where the synthetic checkpoint is (written if missing)")
    parser.add_argument("--dtype", action="append", choices=("float32", "bfloat16", "float16"), default=None)
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.measure_only:
        print(json.dumps(measure(args.dir, args.dtype[0])))
        return 0
    written = None
    if not (args.dir / "config.json").is_file():
        written = write_checkpoint(args.dir)
    runs = []
    for dtype in args.dtype or ["bfloat16"]:
        child = subprocess.run([sys.executable, __file__, "--dir", str(args.dir), "--dtype", dtype, "--measure-only"],
                               capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
        runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
    print(json.dumps({"command": " ".join(["python", "benchmarks/bench_load_memory.py", *sys.argv[1:]]),
                      "checkpoint": str(args.dir), "written": written, "runs": runs,
                      "bound": "peak resident memory while loading <= 1.3 x the weights in the target dtype"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

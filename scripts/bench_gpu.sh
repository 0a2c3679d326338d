#!/usr/bin/env bash
# One prepared call for a session that HAS a GPU (give it ~8 min): `citrus-v bench` on the 8b
# (random weights, bf16) beside the three anchor scripts of ../shared/bench, each under its own
# timeout so one failure still leaves the others' numbers. Writes $OUT/gpu_bench.json.
#   run: bash scripts/bench_gpu.sh            (OUT defaults to a temp dir; SHARED to ../shared or ./shared)
#   CPU dry run of the plumbing: TINY=1 bash scripts/bench_gpu.sh
# Nothing here has been run on a GPU yet: the numbers it produces are the first GPU numbers.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
SHARED=${SHARED:-../shared}
[ -d "$SHARED/bench" ] || SHARED=./shared
TINY=${TINY:-0}
if [ "$TINY" = 1 ]; then CONFIG=tiny DEVICE=cpu; else CONFIG=8b DEVICE=cuda; fi
export HF_HUB_OFFLINE=1 OUT TINY

part() {  # part NAME SECONDS CMD...: log to $OUT/NAME.log, keep going on failure
  local name=$1 secs=$2; shift 2
  local start=$SECONDS
  timeout "$secs" "$@" >"$OUT/$name.log" 2>&1
  echo "$name rc=$? $((SECONDS - start))s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt" 2>&1
part citrus_v 200 python -m citrus_v.cli bench --config "$CONFIG" --device "$DEVICE" --out "$OUT/citrus_v" \
  ${FAST_COMPILE:+--compile} --note "scripts/bench_gpu.sh"
part hf_baseline 110 python "$SHARED/bench/hf_baseline.py"
part hf_compiled 90 python "$SHARED/bench/hf_compiled.py"
part hf_train_mm 70 python "$SHARED/bench/hf_train_mm.py"

python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
from citrus_v.bench.anchors import call_record, last_json
ours = out / "citrus_v" / "bench.json"
result = {
    **call_record(out, "bash scripts/bench_gpu.sh"),
    "citrus_v": json.loads(ours.read_text()) if ours.exists() else {"error": (out / "citrus_v.log").read_text()[-1500:]},
    "hf_train_mm": last_json(out / "hf_train_mm.log"),
}
(out / "gpu_bench.json").write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps({k: (v if k != "citrus_v" else {x: v.get(x) for x in ("decode_tok_s_b1", "decode_tok_s_b8", "predict_with_mask_s", "train")}) for k, v in result.items()}, indent=1))
PY

#!/usr/bin/env bash
# One prepared call on a lent GPU (one H200, 16 cores; ~9.5 minutes): does the LLM learn to copy the digits
# off a lab page when it sees more pages than the CPU runs did (41,600 in the longest), at 64 a step? (docs/default_model.md, "What was tried".)
#
#   1. the shared anchors (hf_baseline.py, hf_compiled.py), one after the other, as the brief asks;
#   2. scripts/probe_doc_finetune.py from the shipped default on the GPU (bf16 autocast, 64 pages a step for the
#      rest of the call: 3 to 6 minutes, as long as the anchors leave): ViT, merger and LLM
#      train on lab pages of the suite's train split, four questions a page, with the per-token reading target
#      (--target slots) and the copy-attention target (--attend-layer 2, which moved val exact on the CPU); validation is the 120 document records of the suite's val split (first 1,500 records),
#      never test. It stops at --max-minutes and still writes its curve.
#   3. $OUT/gpu_doc_reading.json: the anchors' figures and the curve (the model itself is not kept: the probe
#      asks whether reading is learnable, a shipped model needs the whole mixture).
#
# Needs, carried: .whl/transformers-5.24.0-*.whl (the device image has 5.17, which this code does not run on).
#   run:          bash scripts/gpu_doc_reading.sh            (OUT defaults to a temp dir)
#   CPU dry run:  DRY=1 bash scripts/gpu_doc_reading.sh      (a few steps, short anchors)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
WORK=${WORK:-/tmp/citrus_doc}
END_S=${END_S:-570}  # the script's own deadline in seconds, inside the call's 600
SHARED=${SHARED:-../shared}
[ -d "$SHARED/bench" ] || SHARED=./shared
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ "${DRY:-0}" = 1 ]; then
  DEVICE=cpu WORKERS=0 BATCH=4 PAGES=40 STEPS=6 EVERY=3 VAL_INDEX=150 ANCHOR_S=30 DEVICE_ENV=TINY=1
else
  DEVICE=cuda WORKERS=${WORKERS:-12} BATCH=${BATCH:-64} PAGES=${PAGES:-8000} STEPS=${STEPS:-6000} EVERY=${EVERY:-250}
  VAL_INDEX=1500 ANCHOR_S=120 DEVICE_ENV=TINY=0
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt" 2>&1
fi
PY=${PY:-python3}
stamp() { echo "[$SECONDS s] $*"; }

for name in hf_baseline hf_compiled; do
  start=$SECONDS
  env $DEVICE_ENV timeout "$ANCHOR_S" "$PY" "$SHARED/bench/$name.py" >"$OUT/$name.log" 2>&1
  stamp "$name rc=$? $((SECONDS - start))s"
done

minutes=$("$PY" -c "print(round(max(0.5, ($END_S - $SECONDS - ${MARGIN_S:-150}) / 60), 2))")  # making ~8,000 pages (~45 s), loading, the final eval
stamp "reading probe, $minutes min of training"
"$PY" scripts/probe_doc_finetune.py --device "$DEVICE" --workers "$WORKERS" --batch-size "$BATCH" --n-pages "$PAGES" \
  --steps "$STEPS" --lr 1e-3 --target slots --attend-layer 2 --eval-every "$EVERY" --val-index "$VAL_INDEX" --max-minutes "$minutes" \
  --out "$WORK/probe" >"$OUT/probe.log" 2>&1
rc=$?; stamp "probe rc=$rc"

"$PY" - "$OUT" "$WORK/probe/curve.json" "$rc" <<'PY'
import json, pathlib, sys
out, curve, rc = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
from citrus_v.bench.anchors import call_record
result = {
    **call_record(out, "bash scripts/gpu_doc_reading.sh"),
    "probe": {"rc": rc, **(json.loads(curve.read_text()) if curve.exists() else {})},
}
(out / "gpu_doc_reading.json").write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps(result["probe"].get("curve", [])[-1:], indent=1))
PY
(cd "$OUT" && tar czf logs.tar.gz --remove-files ./*.log 2>/dev/null; ls -la)
stamp done

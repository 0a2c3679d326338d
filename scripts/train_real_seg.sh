#!/usr/bin/env bash
# Issue 21, segmentation side: cached stage 4 of the shipped default on the real suite's masks
# (CVC-ClinicDB polyps, COVID lung masks, MoNuSeg nuclei, DRIVE vessels) plus a synthetic replay slice,
# measured per source on VALIDATION records only (the test splits are not read).
# Usage: bash scripts/train_real_seg.sh REAL_SUITE [RUN_DIR [INIT]]
#   REAL_SUITE: the folder `citrus-v data real-suite` wrote (one subfolder per source)
#   INIT: the model folder it starts from (default: citrus_v/assets/default; scripts/train_default.sh passes
#   the end of the synthetic chain)
# Knobs (environment): SYNTH_TRAIN (24 synthetic replay records; 0: the suite's whole train split),
#   TRAIN_COUNT ("": REAL_SEG's counts; e.g. "totalseg=0" adds every TotalSegmentator train slice),
#   STEPS (72), VAL_EVERY (24). The run that kept the phantoms and the real CT/MR slices:
#   SYNTH_TRAIN=0 TRAIN_COUNT=totalseg=0 STEPS=288 VAL_EVERY=48 (docs/default_model.md, "larger replay"),
#   which is the shipped default's last stage.
# Time and memory on the 2-core development machine: docs/default_model.md, "Real data (issue 21)".
set -euo pipefail
cd "$(dirname "$0")/.."
REAL=${1:?usage: bash scripts/train_real_seg.sh REAL_SUITE [RUN_DIR [INIT]]}
RUN=${2:-runs/realseg}
INIT=${3:-citrus_v/assets/default}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$RUN"
if [ ! -f "$RUN/suite/val.jsonl" ]; then
  citrus-v data phantoms --out "$RUN/suite" --n 400 --n-val 100 --n-test 1 --seed 7 --size 224
fi
if [ ! -f "$RUN/data/val.jsonl" ]; then
  # shellcheck disable=SC2086
  python scripts/train_real_seg.py subsets --real "$REAL" --synthetic "$RUN/suite" --out "$RUN/data" \
    --synthetic-train "${SYNTH_TRAIN:-24}" --train-count ${TRAIN_COUNT:-}
fi
if [ ! -f "$RUN/eval_before/eval.json" ]; then
  citrus-v eval --data "$RUN/data/val.jsonl" --model "$INIT" --out "$RUN/eval_before" --no-progress
fi
if [ ! -f "$RUN/stage4/final/config.json" ]; then
  # cached stage 4 (as citrus-v train-seg-cached) with 8 warm-up steps: batch 8, lr 5e-4, STEPS steps, val every VAL_EVERY;
  # --resume continues an interrupted run (finished cache shards and checkpoints are kept)
  python scripts/train_real_seg.py train --init "$INIT" --data "$RUN/data/train.jsonl" \
    --val "$RUN/data/val.jsonl" --out "$RUN/stage4" --steps "${STEPS:-72}" --val-every "${VAL_EVERY:-24}" --resume
fi
if [ ! -f "$RUN/eval_after/eval.json" ]; then
  citrus-v eval --data "$RUN/data/val.jsonl" --model "$RUN/stage4/final" --out "$RUN/eval_after" --no-progress
fi
echo "val Dice per source on the cached features (reference [SEG] states): before, after"
python scripts/train_real_seg.py cached "$RUN/data/val.jsonl" "$RUN/stage4" "$INIT" "$RUN/stage4/final"
for k in before after; do
  echo "val Dice per source, $k (source | masks | mean | median):"
  python scripts/train_real_seg.py table "$RUN/data/val.jsonl" "$RUN/eval_$k/predictions.jsonl"
done

#!/usr/bin/env bash
# Issue 21: the real-data tail of the default's rebuild. From a model folder (default: the shipped
# default, i.e. the end of scripts/train_default.sh) and the folder `citrus-v data real-suite` wrote,
# it packs the real train/val splits (test.jsonl is never read), makes a fresh synthetic replay suite,
# mixes them, runs stage 3 (configs/default/stage3r.json: MLLM + [SEG] projector + LiteMedSAM's prompt
# encoder and mask decoder; its image encoder stays frozen) once per learning rate, scores each run on
# the real val records and keeps the best (scripts/train_real_default.py pick). Every step is skipped
# when its output exists and `citrus-v train --resume` continues an interrupted run, so running the
# command again resumes it.
#
# Usage: bash scripts/train_real_default.sh REAL_SUITE RUN [INIT]
# Knobs (environment): LRS ("2e-4 5e-4"; an item LR:STEPS runs that many steps instead of EPOCHS), EPOCHS (8),
#   BUDGET_MIN (unset: no time budget per run),
#   N_SYNTH (4000 synthetic replay records), WORKERS (2 batch readers per run), SYNTH_WORKERS (WORKERS),
#   VQA_REPEAT (1: VQA-RAD's balanced train records per epoch), MAX_SIDE/QUALITY/THIN (pack; 0/90/none),
#   PARALLEL (1: the stage-3 runs side by side, for a GPU), EVAL_BATCH (1), PYTHON (python),
#   SOUP_ALPHA (unset: none; else RUN/soup = the start moved towards RUN/best by this fraction of the way),
#   VOCAB (0: stage 3 starts from INIT as it is; 1: from INIT with the real train texts' words added to its
#   tokenizer, RUN/init_vocab: on VQA-RAD val it raised open recall and lowered closed accuracy, docs/default_model.md).
# Time: docs/default_model.md, "Real data (issue 21)" (a lent H200 ran it with BUDGET_MIN=4).
set -euo pipefail
cd "$(dirname "$0")/.."
REAL=${1:?usage: bash scripts/train_real_default.sh REAL_SUITE RUN [INIT]}
RUN=${2:?usage: bash scripts/train_real_default.sh REAL_SUITE RUN [INIT]}
INIT=${3:-citrus_v/assets/default}
PY=${PYTHON:-python}
LRS=${LRS:-2e-4 5e-4}
WORKERS=${WORKERS:-2}
cv() { "$PY" -m citrus_v.cli "$@"; }
mkdir -p "$RUN"

if [ ! -f "$RUN/real_pack/counts.jsonl" ]; then
  # shellcheck disable=SC2086
  "$PY" scripts/train_real_default.py pack --real "$REAL" --out "$RUN/real_pack" --max-side "${MAX_SIDE:-0}" \
    --quality "${QUALITY:-90}" --thin ${THIN:-}
fi
if [ ! -f "$RUN/suite_real/val.jsonl" ]; then
  # a fresh seed; its TotalSegmentator slices come only from the train blocks (splits.py)
  cv data phantoms --out "$RUN/suite_real" --n "${N_SYNTH:-4000}" --n-val 300 --n-test 1 --seed 21 --size 224 \
    --workers "${SYNTH_WORKERS:-$WORKERS}"
fi
if [ ! -f "$RUN/real_mix/counts.jsonl" ]; then
  "$PY" scripts/train_real_default.py mix --pack "$RUN/real_pack" --synthetic "$RUN/suite_real" --out "$RUN/real_mix" \
    --n-synthetic "${N_SYNTH:-4000}" --vqa-repeat "${VQA_REPEAT:-1}"
fi

START=$INIT
if [ "${VOCAB:-0}" = 1 ]; then  # the real train texts' words get tokens (the synthetic text encodes as before)
  if [ ! -f "$RUN/init_vocab/model.safetensors" ]; then
    "$PY" scripts/train_real_default.py vocab --base "$INIT" --texts "$RUN"/real_pack/*_train.jsonl \
      --keep "$RUN/suite_real/train.jsonl" --out "$RUN/init_vocab"
  fi
  START=$RUN/init_vocab
fi

stage3() {  # one stage-3 run, $1 = LR or LR:STEPS, then its score on the real val records
  local lr=${1%%:*} out="$RUN/stage3r_lr${1%%:*}" length=(--epochs "${EPOCHS:-8}")
  [[ $1 == *:* ]] && length=(--steps "${1#*:}")
  if [ ! -f "$out/final/config.json" ]; then
    cv train --stage 3 --stage-config configs/default/stage3r.json --data "$RUN/real_mix/train.jsonl" --init "$START" \
      --out "$out" --lr "$lr" "${length[@]}" ${BUDGET_MIN:+--time-budget-min "$BUDGET_MIN"} \
      --workers "$WORKERS" --resume --allow-outside --no-progress
  fi
  if [ ! -f "$out/eval_val/eval.json" ]; then
    cv eval --data "$RUN/real_mix/val_real.jsonl" --model "$out/final" --out "$out/eval_val" \
      --batch-size "${EVAL_BATCH:-1}" --max-new-tokens 48 --no-progress
  fi
}
for lr in $LRS; do
  if [ "${PARALLEL:-0}" = 1 ]; then stage3 "$lr" > "$RUN/stage3r_lr${lr%%:*}.log" 2>&1 & else stage3 "$lr"; fi
done
wait
evals=()
for lr in $LRS; do evals+=("$RUN/stage3r_lr${lr%%:*}/eval_val"); done
"$PY" scripts/train_real_default.py pick --data "$RUN/real_mix/val_real.jsonl" "${evals[@]}" | tee "$RUN/pick.md"
best=$(tail -n 1 "$RUN/pick.md")
rm -rf "$RUN/best" && cp -r "$(dirname "$best")/final" "$RUN/best"
echo "best on val: $best -> $RUN/best"
if [ -n "${SOUP_ALPHA:-}" ]; then  # weight-space interpolation between the start and the best run (keeps more of the start)
  "$PY" scripts/train_real_default.py soup --base "$START" --tuned "$RUN/best" --alpha "$SOUP_ALPHA" --out "$RUN/soup"
fi

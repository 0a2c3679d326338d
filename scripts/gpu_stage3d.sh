#!/usr/bin/env bash
# One prepared call on a lent GPU (one H200, 16 cores; ~9.5 minutes): stage "3d" of the default model,
# i.e. stage 3 continued from the shipped stage-3c MLLM with 128-sample batches for as long as the
# call allows, beside the shared anchor scripts (hf_baseline.py, hf_compiled.py) as the brief asks.
#
#   1. a smoke run (3 steps on 300 fresh records) so that a GPU-only failure shows in the first minute;
#   2. the anchors, one after the other, while 12 cores write the suite's train split (60,000 records,
#      seed 1: its first 30,000 are the records of the CPU recipe's suite, the test split is untouched;
#      no TotalSegmentator slices: they do not fit the 64 MiB that travels beside the wheel);
#   3. `citrus-v train --stage-config configs/default/stage3d.json --time-budget-min ...`: the run and its
#      cosine are shortened to what fits before the call's end;
#   4. the MLLM's weights in fp16 (the only part later stages keep: stage 4 is re-run on the CPU) to $OUT.
#
# Needs, carried: .whl/transformers-5.24.0-*.whl (the image has 5.17, which this code does not run on) and
# .gpu/init3c (stage 3c's config, tokenizer and segmenter side in fp16; its MLLM equals the shipped default's,
# checked bit for bit, so it is taken from citrus_v/assets/default). Writes $OUT/gpu_stage3d.json.
# Make .gpu/init3c once, here, from a stage-3 model folder that has the tiny SAM2 segmenter (e.g. stage3c/final
# of scripts/train_default.sh; the shipped default has LiteMedSAM instead):
#   PREPARE=runs/default/stage3c/final bash scripts/gpu_stage3d.sh
#   run:      bash scripts/gpu_stage3d.sh         (OUT defaults to a temp dir)
#   CPU dry run of the plumbing: DRY=1 bash scripts/gpu_stage3d.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PREPARE:-}" ]; then
  mkdir -p .gpu/init3c && cp "$PREPARE"/{config.json,tokenizer.json,preprocessor_config.json} .gpu/init3c/ || exit 1
  exec python3 - "$PREPARE/model.safetensors" .gpu/init3c/segmenter_fp16.safetensors <<'PY'
import sys
from safetensors.torch import load_file, save_file
sd = load_file(sys.argv[1])
save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items() if not k.startswith("mllm.")}, sys.argv[2])
print("wrote", sys.argv[2])
PY
fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
DRY=${DRY:-0}
WORK=${WORK:-/tmp/citrus_gpu}
END_S=${END_S:-570}  # the script's own deadline in seconds, inside the call's 600
SHARED=${SHARED:-../shared}
[ -d "$SHARED/bench" ] || SHARED=./shared
STAGE=${STAGE:-configs/default/stage3d.json}
INIT_MLLM=${INIT_MLLM:-citrus_v/assets/default/model.safetensors}  # where the init's MLLM weights come from
N_TRAIN=${N_TRAIN:-60000}
ANCHORS=${ANCHORS:-1}  # 0: a continuation call that already has its anchors from an earlier one
RUN=${RUN:-stage3d}
mkdir -p "$WORK"
if [ "$DRY" = 1 ]; then  # CPU: small suite, 8-sample batches, short anchors
  N_TRAIN=400 GEN_WORKERS=2 LOAD_WORKERS=2 DEVICE_ENV=TINY=1 ANCHOR_S=60 STEPS_ARGS=(--steps 30)
  echo "{\"base\": \"$(realpath "$STAGE")\", \"micro_batch_size\": 8}" >"$WORK/stage3d_dry.json"
  STAGE=$WORK/stage3d_dry.json
else
  GEN_WORKERS=${GEN_WORKERS:-12} LOAD_WORKERS=${LOAD_WORKERS:-12} DEVICE_ENV=TINY=0 ANCHOR_S=120 STEPS_ARGS=()
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ "$DRY" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt" 2>&1
fi
PY=${PY:-python3}
cli() { "$PY" -m citrus_v.cli "$@"; }
stamp() { echo "[$SECONDS s] $*"; }

# the init model: stage 3c = the shipped MLLM + the carried segmenter side
"$PY" - "$WORK/init3c" "$INIT_MLLM" <<'PY' || exit 1
import shutil, sys, pathlib
from safetensors.torch import load_file, save_file
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
for f in ("config.json", "tokenizer.json", "preprocessor_config.json"):
    shutil.copy(pathlib.Path(".gpu/init3c") / f, out / f)
mllm = {k: v for k, v in load_file(sys.argv[2]).items() if k.startswith("mllm.")}
rest = load_file(".gpu/init3c/segmenter_fp16.safetensors")
save_file({k: v.float() for k, v in {**mllm, **rest}.items()}, str(out / "model.safetensors"))
print("init3c:", len(mllm), "+", len(rest), "tensors")
PY

# the suite's train split, written on 12 cores while the smoke run and the anchors use the GPU
cli data phantoms --out "$WORK/suite" --n "$N_TRAIN" --n-val 1 --n-test 1 --seed 1 --size 224 --workers "$GEN_WORKERS" \
  >"$OUT/suite.log" 2>&1 &
gen=$!
stamp "smoke"
[ "$ANCHORS" = 1 ] && cli data phantoms --out "$WORK/smoke" --n 300 --n-val 1 --n-test 1 --seed 7 --size 224 --workers 4 >"$OUT/smoke.log" 2>&1 &&
  cli train --stage 3 --stage-config "$STAGE" --data "$WORK/smoke/train.jsonl" --init "$WORK/init3c" \
    --out "$WORK/smoke_run" --steps 3 --workers 2 --no-progress >>"$OUT/smoke.log" 2>&1
rc=$?; [ "$ANCHORS" = 1 ] || rc=0; stamp "smoke rc=$rc"
if [ $rc != 0 ]; then kill $gen; tail -40 "$OUT/smoke.log"; exit 1; fi

stamp "anchors"
for name in $([ "$ANCHORS" = 1 ] && echo hf_baseline hf_compiled); do
  start=$SECONDS
  env $DEVICE_ENV timeout "$ANCHOR_S" "$PY" "$SHARED/bench/$name.py" >"$OUT/$name.log" 2>&1
  stamp "$name rc=$? $((SECONDS - start))s"
done
wait $gen; rc=$?; stamp "suite rc=$rc"; [ $rc = 0 ] || { tail -20 "$OUT/suite.log"; exit 1; }

budget_min=$(python3 -c "print(round(max(0.5, ($END_S - $SECONDS - ${MARGIN_S:-75}) / 60), 2))")  # 75 s: start-up + export
stamp "$RUN, budget $budget_min min"
cli train --stage 3 --stage-config "$STAGE" --data "$WORK/suite/train.jsonl" --init "$WORK/init3c" \
  --out "$WORK/$RUN" --workers "$LOAD_WORKERS" --time-budget-min "$budget_min" "${STEPS_ARGS[@]}" --no-progress \
  >"$OUT/$RUN.log" 2>&1
rc=$?; stamp "$RUN rc=$rc"
cp "$WORK/$RUN/metrics.jsonl" "$OUT/stage3d_metrics.jsonl" 2>/dev/null

"$PY" - "$OUT" "$WORK/$RUN/final" "$rc" <<'PY'
import json, pathlib, sys
out, final, rc = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
from citrus_v.bench.anchors import call_record
rows = [json.loads(x) for x in (out / "stage3d_metrics.jsonl").read_text().splitlines()] if (out / "stage3d_metrics.jsonl").exists() else []
def mean(rs, key):
    return round(sum(r[key] for r in rs) / len(rs), 4) if rs else None
result = {
    **call_record(out, "bash scripts/gpu_stage3d.sh"),
    "stage3d": {"rc": rc, "steps": rows[-1]["step"] if rows else 0, "samples": rows[-1]["samples"] if rows else 0,
                "train_s": rows[-1]["elapsed_s"] if rows else None,
                "lm_loss_first50": mean(rows[:50], "lm_loss"), "lm_loss_last50": mean(rows[-50:], "lm_loss"),
                "mask_loss_first50": mean(rows[:50], "mask_loss"), "mask_loss_last50": mean(rows[-50:], "mask_loss")},
}
if rc == 0 and (final / "model.safetensors").exists():
    from safetensors.torch import load_file, save_file
    sd = load_file(str(final / "model.safetensors"))
    save_file({k: v.half() for k, v in sd.items() if k.startswith("mllm.")}, str(out / "stage3d_mllm_fp16.safetensors"))
    result["stage3d"]["exported"] = "stage3d_mllm_fp16.safetensors"
(out / "gpu_stage3d.json").write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps(result, indent=1))
PY
# at most 8 files come back: the logs travel as one archive
(cd "$OUT" && tar czf logs.tar.gz --remove-files ./*.log gpu.txt 2>/dev/null; ls -la)
stamp done

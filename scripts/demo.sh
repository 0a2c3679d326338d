#!/usr/bin/env bash
# The README's main job: install citrus-v in a fresh venv, then run the embedded default model on a
# bundled real CT slice (DICOM), a bundled real chest X-ray, a synthetic phantom and a bundled real fundus
# photograph (whole and in tiles): answer, reasoning, boxes, masks, overlays.
# Outputs land in out/demo/ (overlay.png, mask_*.png, prediction.json per run).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip >/dev/null
pip install -q torch==2.13.0 -e .
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
EX=citrus_v/assets/examples
run() {  # run NAME IMAGE PROMPT [PREDICT FLAGS...]
  echo "== $1: $3 ${*:4}"
  citrus-v predict --image "$2" --prompt "$3" --out "out/demo/$1" --json "${@:4}" | tee "out/demo/$1.json.tmp" >/dev/null
  mkdir -p "out/demo/$1" && mv "out/demo/$1.json.tmp" "out/demo/$1/prediction.json"
  python - "out/demo/$1/prediction.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
print("answer:   ", p["answer"])
if p.get("reasoning"):
    print("reasoning:", p["reasoning"])
for b in p.get("boxes", []):
    written = f"(as written {b['text_bbox']}, tightened by the segmenter)" if "text_bbox" in b else ""
    print("box:      ", b["label"], b["bbox"], written)
if p.get("tiles"):
    rows, cols = p["tiles"]["grid"]
    print(f"tiles:     {rows}x{cols}, answers {p['tiles']['answers']}; the masks stitched")
for path, s in zip(p.get("masks", []), p.get("mask_scores", [])):
    print(f"mask:      {path} (predicted IoU {s:.2f})")
if p.get("overlay"):
    print("overlay:  ", p["overlay"])
PY
}
mkdir -p out/demo
run ct_liver "$EX/ct_abdomen_liver.dcm" "Please segment the liver."
run cxr_lungs "$EX/chest_xray_pa.jpg" "Please segment the lungs."
run phantom_liver "$EX/phantom_ct_lesion.png" "Please segment the liver."
run phantom_segment "$EX/phantom_ct_lesion.png" "Please segment the lesion."
run phantom_reasoning "$EX/phantom_ct_lesion.png" "Is the lesion in the liver or the spleen? Think step by step."
run phantom_report "$EX/phantom_ct_lesion.png" "Write a report for this image."
run phantom_detect "$EX/phantom_ct_lesion.png" "Please locate the lesion."
# a real fundus photograph at DRIVE's size, whole and in 2x2 tiles (the scale the vessels were learned at)
run fundus_whole "$EX/fundus_retina.jpg" "Please segment the retinal vessels."
run fundus_tiled "$EX/fundus_retina.jpg" "Please segment the retinal vessels." --tiles auto

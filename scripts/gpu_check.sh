#!/usr/bin/env bash
# The GPU check of rvc-ray, for a Linux machine with an NVIDIA GPU (about 8 minutes):
#   bash scripts/gpu_check.sh
# 1. creates its own venv (.venv-gpu; --system-site-packages, so a CUDA torch already on the machine is
#    reused), installs the CUDA torch from PyPI if it has none (PyPI's Linux x86_64 torch wheels are CUDA
#    builds), then rvc-ray's dependencies with the `gpu` extra (faiss-gpu-cu12) and the dev tools; it never
#    touches .venv (the CPU venv of scripts/bootstrap.sh);
# 2. runs `pytest -m gpu` (tests/gpu: NCCL training with DDP forced on, bf16/fp16 steps, GPU extraction
#    actors, the faiss-gpu index, a conversion on the GPU);
# 3. runs the benchmarks (benchmarks/bench_gpu.py, then benchmarks/bench_model.py --device cuda).
# Every result is one JSON line on stdout, also collected in $RVC_RAY_GPU_OUT/results.jsonl (default
# gpu-check/); progress goes to stderr. Exit status: 0 when the tests passed, 1 otherwise.
# Settings (environment): RVC_RAY_GPU_VENV (venv path), RVC_RAY_TORCH_VERSION (default 2.13.0),
# RVC_RAY_WHEELHOUSE (a directory of wheels: install offline from it, no index), RVC_RAY_GPU_BENCH=0 (tests only).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
PY=${PYTHON:-python3}
VENV=${RVC_RAY_GPU_VENV:-.venv-gpu}
OUT=${RVC_RAY_GPU_OUT:-gpu-check}
mkdir -p "$OUT"
: > "$OUT/results.jsonl"

log() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" >&2; }
emit() { printf '%s\n' "$1" | tee -a "$OUT/results.jsonl"; }
fail() { emit "{\"check\": \"gpu_check\", \"status\": \"error\", \"stage\": \"$1\", \"elapsed_s\": $(( $(date +%s) - START ))}"; exit 1; }

command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: this script needs an NVIDIA GPU and driver"
log "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"

if [ -n "${RVC_RAY_WHEELHOUSE:-}" ]; then
  export PIP_NO_INDEX=1 PIP_FIND_LINKS="$RVC_RAY_WHEELHOUSE"
  log "installing offline from $RVC_RAY_WHEELHOUSE"
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV" || fail "venv"
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install -q --disable-pip-version-check)

if ! "$VPY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  log "installing torch==${RVC_RAY_TORCH_VERSION:-2.13.0} (CUDA build from PyPI)"
  "${PIP[@]}" "torch==${RVC_RAY_TORCH_VERSION:-2.13.0}" || fail "torch install"
fi
"$VPY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" || fail "CUDA torch"
log "installing rvc-ray's dependencies with the gpu extra"
# The project's own dependency lists (no build of rvc-ray itself: the code runs from this checkout).
mapfile -t DEPS < <("$VPY" - <<'EOF'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
for dep in project["dependencies"] + extras["gpu"] + extras["dev"]:
    print(dep)
EOF
)
[ "${#DEPS[@]}" -gt 0 ] || fail "reading pyproject.toml (needs Python >= 3.11)"
"${PIP[@]}" "${DEPS[@]}" || fail "dependencies"
# Both declare torchaudio, which rvc-ray never imports.
"${PIP[@]}" --no-deps "torchcrepe==0.0.24" "torchfcpe==0.0.4" || fail "torchcrepe/torchfcpe"
"$VPY" -c "import faiss, ray, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'faiss GPUs', faiss.get_num_gpus())" >&2 \
  || fail "imports"
log "environment ready"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RAY_DATA_DISABLE_PROGRESS_BARS=1 RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0 RAY_AUTH_MODE=disabled
export RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
log "pytest -m gpu"
timeout 330 "$VPY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider -rs --junitxml="$OUT/pytest.xml" >"$OUT/pytest.log" 2>&1
TESTS_RC=$?
tail -25 "$OUT/pytest.log" >&2
emit "$("$VPY" - "$OUT/pytest.xml" "$TESTS_RC" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
except Exception as exc:  # noqa: BLE001
    counts, failed = {"error": f"no junit report: {exc}"}, []
print(json.dumps({"check": "pytest -m gpu", "exit_status": int(sys.argv[2]), **counts, "failed": failed}))
EOF
)"

if [ "${RVC_RAY_GPU_BENCH:-1}" != "0" ]; then
  log "benchmarks/bench_gpu.py"
  timeout 240 "$VPY" benchmarks/bench_gpu.py 2>>"$OUT/bench.err" | tee -a "$OUT/results.jsonl"
  log "benchmarks/bench_model.py --device cuda (fp32 vs bf16 loss curve, batch 16)"
  timeout 90 "$VPY" benchmarks/bench_model.py --device cuda --batch 16 --warmup 2 --steps 8 --threads 4 \
    2>>"$OUT/bench.err" | tee -a "$OUT/results.jsonl"
fi
STATUS=$([ "$TESTS_RC" -eq 0 ] && echo passed || echo failed)
emit "{\"check\": \"gpu_check\", \"status\": \"$STATUS\", \"elapsed_s\": $(( $(date +%s) - START ))}"
[ "$TESTS_RC" -eq 0 ]

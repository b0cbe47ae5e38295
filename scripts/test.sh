#!/usr/bin/env bash
# Run the whole test suite (unit + Ray integration tests), creating .venv first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export RAY_DATA_DISABLE_PROGRESS_BARS=1 RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0 RAY_AUTH_MODE=disabled \
       RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"

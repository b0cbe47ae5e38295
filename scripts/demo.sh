#!/usr/bin/env bash
# Run the main job on the built-in demo corpus: preprocess, extract, index, train, export.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python jobs/train.py "$@"

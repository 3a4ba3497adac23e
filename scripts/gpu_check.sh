#!/usr/bin/env bash
# GPU check, one call (about 4 minutes on an H100): scripts/gpu_check.sh OUTDIR [extra args]
# Runs from the source tree with the machine's own torch/transformers; installs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 scripts/gpu_check.py "$out" "$@" 2>&1 | tee -a "$out/console.txt"

#!/usr/bin/env bash
# GPU check, one call (about 5 minutes on an H100): scripts/gpu_check.sh OUTDIR [extra args]
# Runs from the source tree with the machine's own torch/transformers; installs nothing.
# Writes at most 8 files into OUTDIR (console.txt holds everything printed); see scripts/gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_check.sh OUTDIR [--preset tiny --device cpu ...]}
shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 scripts/gpu_check.py "$out" "$@" 2>&1 | tee -a "$out/console.txt"

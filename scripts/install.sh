#!/usr/bin/env bash
# Install the suite into ./.venv without pulling a multi-GB CUDA torch onto a CPU-only machine.
#   scripts/install.sh           runtime only
#   scripts/install.sh --test    plus the test tools and Ray (the cluster backend's tests need it)
#   (not the lmms-eval extra: its torchvision does not load beside the CPU torch; README, "Use it in your own code")
# - torch already importable in the venv (or VTC_KEEP_TORCH=1): kept as it is.
# - an NVIDIA driver answers (nvidia-smi): torch from the default index (a CUDA build).
# - otherwise: the CPU build pinned in constraints/cpu.txt; pip takes it from a local wheel
#   cache when its configuration has one, else from the PyTorch CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--test" ] && extras="[test,ray]"
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
echo "install: into ./.venv (torch, transformers, scikit-learn, matplotlib...; a few minutes the first time)"
if .venv/bin/python -c "import torch" 2>/dev/null || [ "${VTC_KEEP_TORCH:-0}" = 1 ]; then
  echo "install: keeping the torch already installed"
  "${pip[@]}" -e ".${extras}"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "install: NVIDIA GPU found, torch from the default index (CUDA build)"
  "${pip[@]}" -e ".${extras}"
else
  probe=$(mktemp -d)
  if .venv/bin/python -m pip download --quiet --no-deps --no-index -d "$probe" torch==2.13.0 >/dev/null 2>&1; then
    echo "install: no GPU, CPU torch from the local wheel cache"
    "${pip[@]}" -c constraints/cpu.txt -e ".${extras}"
  else
    echo "install: no GPU, CPU torch from the PyTorch CPU index"
    "${pip[@]}" -c constraints/cpu.txt --extra-index-url https://download.pytorch.org/whl/cpu -e ".${extras}"
  fi
  rm -rf "$probe"
fi
echo "install: checking the installed versions"
.venv/bin/python -c "import torch, transformers; print(f'install: done: torch {torch.__version__}, transformers {transformers.__version__}')"

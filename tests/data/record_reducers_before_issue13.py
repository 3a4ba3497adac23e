"""Record the paper's methods' outputs before issue 13 changed how they run.

Run at commit 2db5a1f (the reducers as of issue 11) from the repository root:

    python tests/data/record_reducers_before_issue13.py

It writes ``tests/data/reducers_before_issue13.pt`` (at a later commit it would record that
commit's outputs instead): the outputs of every case in
``tests/reducers/issue13_cases.py`` plus the CPU capability and torch version they were
recorded with (GEMM results, hence the bits, depend on the CPU's kernels).
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "reducers"))

import issue13_cases  # noqa: E402

if __name__ == "__main__":
    out = {"meta": {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": str(torch.__version__),
                    "commit": "2db5a1f"},
           "cases": issue13_cases.record()}
    path = ROOT / "tests" / "data" / "reducers_before_issue13.pt"
    torch.save(out, path)
    print(f"{len(out['cases'])} cases -> {path} ({path.stat().st_size / 1e6:.2f} MB)")

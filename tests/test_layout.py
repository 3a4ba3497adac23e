"""The layout: one room per concern, arrows only pointing down, modules and functions small."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("rows", "costmodel", "reducers", "vlm", "profiler", "evaluation", "reports", "vtc")
#: what each room may import of ours (vtc may import anything)
ALLOWED = {
    "rows": set(), "costmodel": set(), "reducers": set(),
    "vlm": {"reducers", "costmodel", "rows"},
    "profiler": {"vlm", "reducers", "costmodel", "rows"},
    "evaluation": {"vlm", "reducers", "costmodel", "rows"},
    "reports": {"costmodel", "rows"},
}
#: formula tables, allowed to be long (LLM-Viewer's and the corrected per-op tables)
LONG_OK = {("costmodel/ops.py", "llm_viewer_ops"), ("costmodel/ops.py", "transformer_ops")}


@pytest.mark.parametrize("room", ["rows", "costmodel", "reducers"])
def test_bottom_rooms_import_nothing_else_of_ours_in_a_fresh_interpreter(room):
    code = (f"import sys, json; import {room}; "
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(ROOMS)!r}))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [room]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(ROOMS)


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_arrows_only_point_down(room):
    bad = {str(p.relative_to(ROOT)): sorted(_imports(p) - ALLOWED[room] - {room})
           for p in (ROOT / room).rglob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_module_over_400_lines_and_no_function_over_60():
    long_modules, long_functions = [], []
    for room in (*ROOMS, "scripts", "benchmarks"):
        for p in (ROOT / room).rglob("*.py"):
            rel = str(p.relative_to(ROOT))
            src = p.read_text()
            if src.count("\n") > 400:
                long_modules.append((rel, src.count("\n")))
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > 60 and (rel, node.name) not in LONG_OK:
                        long_functions.append((rel, node.name, n))
    assert long_modules == [] and long_functions == []

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """The tiny LLaVA preset (random weights), built once per session."""
    from vlm.loading import build_preset
    return build_preset("tiny", seed=0)


@pytest.fixture(scope="session")
def photos():
    from vlm.images import load_images
    return load_images(limit=2)


@pytest.fixture(scope="session")
def pixel_values(tiny, photos):
    return tiny.preprocess([im for _, im in photos])


def kill_midway_and_rerun(cmd, out, env, min_lines=2, timeout_s=180):
    """Start ``cmd``, SIGKILL it once ``out`` has ``min_lines`` rows, then rerun it to the end.

    Returns (killed while still running, lines written before the kill, the rerun's CompletedProcess).
    """
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= min_lines:
            break
        time.sleep(0.05)
    midway = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = out.read_text().count("\n") if out.exists() else 0
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return midway, first, done

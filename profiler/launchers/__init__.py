"""Where work runs: one interface, two launchers (this process; a Ray cluster).

A unit of work goes in, rows come out. A *worker* is built once per process (an actor on Ray:
the model loads once, not once per unit) and turns a unit into rows, yielding them as they are
ready; the launcher hands them to ``write`` on the driver, which alone appends rows, so lines
never interleave. ``vtc profile`` and ``vtc eval`` use the same launchers with their own workers.
"""

from .base import Launcher, LauncherError, Worker, get_launcher
from .local import LocalLauncher

__all__ = ["Launcher", "LauncherError", "Worker", "LocalLauncher", "get_launcher"]

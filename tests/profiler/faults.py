"""Reducer factories that misbehave on purpose, importable by Ray workers (tests only)."""

import os
from pathlib import Path

from reducers import get as get_reducer

MARK = Path(os.environ.get("VTC_TEST_KILL_MARK", "/tmp/vtc-kill-once"))


class _DieOnce:
    """Kills its own worker process the first time it runs (a marker file records it)."""

    name = "spatial"
    hook = "post-projector"
    signals = ()
    optional_signals = ()

    def __init__(self):
        self.inner = get_reducer("spatial")

    def params(self):
        return self.inner.params()

    def reduce(self, features, keep, **kw):
        if not MARK.exists():
            MARK.write_text("killed")
            os._exit(1)  # the worker dies mid-task, as a crash or an OOM kill would
        return self.inner.reduce(features, keep, **kw)


def die_once_factory(name, **params):
    return _DieOnce() if name == "spatial" else get_reducer(name, **params)

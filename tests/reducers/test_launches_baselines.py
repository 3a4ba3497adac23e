"""Launch-lean baselines: dispatched aten ops and host synchronisations per ``reduce()`` call on
LLaVA-1.5 shapes, 576 patches -> 64, counted with a ``TorchDispatchMode`` (about one kernel per
non-view op on a GPU). Pre-projector (the default): CLIP features [1, 577, 1024] with CLS;
post-projector: projected tokens [1, 576, 4096]."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import reducers

#: aten ops that copy a device value to the host (a synchronisation on a GPU)
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "unique_consecutive",
            "unique_dim", "repeat_interleave", "item", "equal", "is_nonzero"}

#: ops per reduce() call (the input checks included). ToMe runs the official 23 sequential
#: bipartite steps (one per CLIP layer before layer -2), each about 21 ops (25 with CLS) for its
#: normalise / score / max / argsort / gather / accumulate / divide chain: each step's matching
#: needs the previous step's merged metric, so the steps cannot be fused.
LIMITS = {"fastervlm": 40, "visionzip": 150, "prumerge-plus": 200, "divprune": 350, "tome": 23 * 25 + 30}


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def inputs(stage):
    g = torch.Generator().manual_seed(0)
    if stage == "pre-projector":
        return torch.randn(1, 577, 1024, generator=g), {
            "tower_cls_attention": torch.rand(1, 577, generator=g).softmax(-1),
            "tower_keys": torch.randn(1, 577, 64, generator=g),
            "tower_last_q": torch.randn(1, 577, 1024, generator=g),
            "tower_last_k": torch.randn(1, 577, 1024, generator=g)}
    return torch.randn(1, 576, 4096, generator=g), {"cls_attention": torch.rand(1, 576, generator=g).softmax(-1),
                                                     "vision_keys": torch.randn(1, 576, 1024, generator=g)}


CASES = [(name, stage) for name in ("fastervlm", "visionzip", "prumerge-plus", "tome")
         for stage in ("pre-projector", "post-projector")] + [("divprune", None)]


@pytest.mark.parametrize("name, stage", CASES, ids=[f"{n}@{s}" if s else n for n, s in CASES])
def test_ops_and_host_syncs_per_call(name, stage):
    r = reducers.get(name, **({"stage": stage} if stage else {}))
    x, sig = inputs(stage or "post-projector")
    sig = {k: v for k, v in sig.items() if k in r.signals + r.optional_signals}
    with Count() as call:
        r.reduce(x, 64, **sig)
    with Count() as core:  # the method alone, without reduce()'s input checks
        r._reduce(x, 64, **sig)
    assert len(call.ops) <= LIMITS[name], (len(call.ops), sorted(set(call.ops)))
    syncs = [o for o in core.ops if o in SYNC_OPS]
    # PruMerge+'s own count is data-dependent: one read of it; everything else never waits
    assert len(syncs) == (1 if name == "prumerge-plus" else 0), syncs

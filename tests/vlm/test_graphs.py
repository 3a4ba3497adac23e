"""Reducers replayed from CUDA graphs: eager with the reason on a CPU; on a GPU, capture once per
(shape, keep), replay after, outputs equal to eager."""

import pytest
import torch

import reducers
from vlm import Runner, make_request, synthetic_prompt
from vlm.graphs import GraphedReducers, capture

CUDA = torch.cuda.is_available()


def test_on_a_cpu_reducers_run_eagerly_and_say_why(tiny, pixel_values, tmp_path):
    g = GraphedReducers()
    x = torch.randn(2, 64, 16)
    red = g.reduce(reducers.get("random"), x, 8, generator=torch.Generator().manual_seed(0))
    assert red.count == 8 and g.execution == "eager" and "need a CUDA device, not cpu" in g.reason
    assert capture(lambda: x + 1, "cpu")[2] == "CUDA graphs need a CUDA device, not cpu"
    r = Runner(tiny, cuda_graphs=True)
    req = make_request(tiny, synthetic_prompt(tiny, 20, batch=2), pixel_values)
    out = r.forward(req, reducers.get("spatial"), 16)
    assert out.extra["reducer_execution"] == "eager" and "CUDA device" in out.extra["reducer_execution_reason"]
    assert Runner(tiny).forward(req, reducers.get("spatial"), 16).extra["reducer_execution"] == "eager"


def test_profile_rows_say_how_the_reducer_ran(tiny, tmp_path):
    from profiler.sweep import ProfileConfig, run_profile
    from rows import read_rows
    run_profile(ProfileConfig(preset="tiny", reducers=["random"], keeps=[8], warmup=0, reps=1, image_limit=1,
                              cuda_graphs=True), tmp_path / "p.jsonl", lm=tiny, progress=False)
    rows = {r["reducer"]: r for r in read_rows(tmp_path / "p.jsonl")}
    assert rows["random"]["reducer_execution"] == "eager" and "CUDA device" in rows["random"]["reducer_execution_reason"]
    assert rows["random"]["options"]["cuda_graphs"] is True and "reducer_execution" not in rows["none"]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: capture and replay of CUDA graphs (none on this machine)")
@pytest.mark.parametrize("name", ["random", "fastervlm", "visionzip", "saliency", "cluster-aggregate"])
def test_capture_replay_and_equal_outputs_on_a_gpu(name):
    r = reducers.get(name)
    g = GraphedReducers()
    gen = torch.Generator(device="cuda")
    x = torch.randn(1, 576, 4096, device="cuda")
    sig = {}
    if "cls_attention" in r.signals:
        sig["cls_attention"] = torch.rand(1, 576, device="cuda").softmax(-1)
    first = g.reduce(r, x, 64, generator=gen.manual_seed(0), **sig)  # eager, then captured
    again = g.reduce(r, x, 64, generator=gen.manual_seed(0), **sig)  # replayed
    if g.execution != "cuda-graph":
        pytest.skip(f"{name} is not capturable yet: {g.reason}")
    assert torch.equal(first.kept_indices, again.kept_indices)
    torch.testing.assert_close(first.features, again.features)
    y = torch.randn_like(x)  # new inputs flow through the static buffers
    torch.testing.assert_close(g.reduce(r, y, 64, generator=gen.manual_seed(0), **sig).features,
                               r.reduce(y, 64, generator=gen.manual_seed(0), **sig).features)

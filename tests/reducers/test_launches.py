"""What a reducer costs on a GPU is kernel launches and host syncs, not FLOPs: dispatched aten
ops (about one kernel each) and host syncs per call, counted with ``benchmarks/bench_reducers.py``'s
``TorchDispatchMode`` on LLaVA-1.5 shapes ([1, 576, 4096] -> 64, default parameters; in-LLM
``select`` on q, k [1, 32, 640, 128], hidden [1, 640, 4096], visual block 35..611). Counts are
deterministic (the shapes fix them), unlike times.

Limits: random and spatial <= 40 ops; every other method of the paper, and each in-LLM
selection, within 1.5x of its most expensive component (e.g. Cluster & Saliency <= 1.5 x
max(K-means, saliency)); one host sync per ``reduce`` call (the input check) and none in the
capturable core (``_reduce``, or ``select``).
"""

import pytest
import torch

import reducers
from benchmarks.bench_reducers import all_inputs, count_ops, op_counts
from benchmarks.bench_reducers import _rms_norm
from reducers.in_llm import dpc_knn, fastv_select, last_row_attention, rater_attention
from reducers.kmeans import kmeans_labels

KEEP = 64
OURS_POST = ["random", "spatial", "saliency", "cluster-saliency-static", "cluster-saliency-dynamic",
             "cluster-saliency-aggregate", "cluster-saliency-keys", "cluster-aggregate"]
OURS_IN_LLM = ["fastv", "dart", "sparsevlm"]
# the baselines' limits are tested in test_launches_baselines.py, on their official inputs (pre-projector)


@pytest.fixture(scope="module")
def inputs():
    return all_inputs(0, "cpu")


@pytest.fixture(scope="module")
def counts(inputs):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = op_counts(name, KEEP, "cpu", torch.float32, inputs)
        return cache[name]
    return get


@pytest.fixture(scope="module")
def components(inputs):
    """Op counts of the parts the methods are built from, on the same inputs."""
    x, sig, (q, k, hidden, vis), _ = inputs
    gen = torch.Generator().manual_seed(0)
    sal = reducers.get("saliency")
    s = torch.rand(1, 576, generator=gen)
    sv = reducers.get("sparsevlm")
    n_rec = int(sv.recycle * (576 - KEEP)) + 1
    h = torch.randn(1, n_rec, hidden.shape[-1], generator=gen)
    return {
        "kmeans-20": count_ops(lambda: kmeans_labels(x, 20, generator=gen)).ops,
        "kmeans-20-keys": count_ops(lambda: kmeans_labels(sig["vision_keys"], 20, generator=gen)).ops,
        "kmeans-64": count_ops(lambda: kmeans_labels(x, KEEP, generator=gen)).ops,
        "saliency": count_ops(lambda: sal._saliency(x, text_embeds=sig["text_embeds"], layer0=sig["layer0"])).ops,
        "top-k": count_ops(lambda: torch.topk(s, KEEP, dim=1).indices.sort(dim=1).values).ops,
        "fastv-score": count_ops(lambda: fastv_select(last_row_attention(q, k), vis.start,
                                                      vis.stop - vis.start, KEEP)).ops,
        "dart-score": count_ops(lambda: (k.float().abs().sum(dim=(1, 3)), _rms_norm(hidden))).ops,
        "sparsevlm-relevance": count_ops(lambda: rater_attention(q, k, vis, sv.prepare(hidden, vis))).ops,
        "sparsevlm-dpc": count_ops(lambda: dpc_knn(h, int(n_rec / sv.recycle_group) + 1)).ops,
    }


PARTS = {
    "saliency": ("saliency", "top-k"),
    "cluster-saliency-static": ("kmeans-20", "saliency"),
    "cluster-saliency-dynamic": ("kmeans-20", "saliency"),
    "cluster-saliency-aggregate": ("kmeans-20", "saliency"),
    "cluster-saliency-keys": ("kmeans-20-keys", "saliency"),
    "cluster-aggregate": ("kmeans-64",),
    "fastv": ("fastv-score", "top-k"),
    "dart": ("dart-score", "top-k"),  # official: a Python loop over its pivots (xfail below)
    "sparsevlm": ("sparsevlm-relevance", "sparsevlm-dpc"),
}


DART_SYNCS = pytest.mark.xfail(strict=True, reason=(
    "DART follows the official loop: its pivots take their tokens in the order a Python set of their "
    "absolute positions iterates, one pivot after the other (issue 12), which reads positions on the host"))


def op_limit(name, components):
    """40 for the samplers; 1.5 x the most expensive component for the paper's methods; for an
    in-LLM selection, whose parts run one after the other, 1.5 x their sum."""
    if name in ("random", "spatial"):
        return 40
    parts = [components[p] for p in PARTS[name]]
    return int(1.5 * (sum(parts) if name in OURS_IN_LLM else max(parts)))


@pytest.mark.parametrize("name", OURS_POST + ["fastv", "sparsevlm", pytest.param("dart", marks=DART_SYNCS)])
def test_dispatched_ops_within_limit(name, counts, components):
    c, limit = counts(name), op_limit(name, components)
    assert c["dispatched_ops"] <= limit, (name, c["dispatched_ops"], limit, components)
    assert c["core_dispatched_ops"] <= c["dispatched_ops"]


@pytest.mark.xfail(strict=False, reason=(
    "not reachable with the algorithm unchanged: greedy k-means++ at k = 64 is 63 sequential steps of "
    "sample, evaluate, pick (9 ops each, about 570), and 20 fixed Lloyd iterations with sync-free empty-"
    "cluster re-seeding are about 24 ops each (about 480); the call is about 1,140 ops (1,630 before)"))
def test_cluster_aggregate_within_400_ops(counts):
    assert counts("cluster-aggregate")["dispatched_ops"] <= 400


def test_cluster_aggregate_does_not_regress(counts):
    assert counts("cluster-aggregate")["dispatched_ops"] <= 1200  # 1,139 at issue 13, 1,630 before


@pytest.mark.parametrize("name", OURS_POST)
def test_one_host_sync_per_call_and_none_in_the_core(name, counts):
    c = counts(name)
    assert c["host_syncs"] == 1, c["host_sync_ops"]  # the input check, features and signals together
    assert c["core_host_syncs"] == 0, c["core_host_sync_ops"]


@pytest.mark.parametrize("name", ["fastv", "sparsevlm", pytest.param("dart", marks=DART_SYNCS)])
def test_in_llm_selection_never_syncs(name, counts):
    assert counts(name)["core_host_syncs"] == 0, counts(name)["core_host_sync_ops"]


@pytest.mark.parametrize("name", ["cluster-saliency-static", "cluster-aggregate", "cluster-saliency-dynamic"])
@pytest.mark.parametrize("d", [4096, 64])  # the Gram path (N <= D) and the direct one
def test_the_core_never_syncs_whatever_the_data(name, d):
    # the op count is fixed by the shapes: data that converges at once and data that never does
    # (duplicates: K-means++ runs out of distinct seeds, Lloyd re-seeds empty clusters) cost the same
    r = reducers.get(name)
    g = torch.Generator().manual_seed(0)
    easy = torch.randn(1, 576, d, generator=g)
    dup = torch.randn(1, 5, d, generator=g)[:, torch.randint(5, (576,), generator=g)]
    sal = torch.rand(1, 576, generator=g)
    kw = {"saliency": sal} if "saliency" in name else {}
    a = count_ops(lambda: r._reduce(easy, KEEP, generator=torch.Generator().manual_seed(0), **kw))
    b = count_ops(lambda: r._reduce(dup, KEEP, generator=torch.Generator().manual_seed(0), **kw))
    assert a.syncs == b.syncs == 0 and a.ops == b.ops

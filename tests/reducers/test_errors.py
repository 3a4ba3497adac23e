import pytest
import torch

import reducers
from reducers import ReducerError


def r(name, **kw):
    return reducers.get(name, **kw)


@pytest.mark.parametrize("call, message", [
    (lambda: r("random").reduce(torch.randn(1, 10, 4), 0), "keep = 0 is out of range; allowed: 1..10"),
    (lambda: r("random").reduce(torch.randn(1, 10, 4), 11), "keep = 11 is out of range; allowed: 1..10"),
    (lambda: r("random").reduce(torch.randn(1, 0, 4), 1), "has an empty dimension"),
    (lambda: r("random").reduce(torch.randn(10, 4), 1), "must have rank 3 [B, N, D], got shape (10, 4)"),
    (lambda: r("random").reduce(torch.tensor([[[1.0, float("nan")]]]), 1), "contain NaN or inf"),
    (lambda: r("random").reduce(torch.tensor([[[1.0, float("inf")]]]), 1), "contain NaN or inf"),
    (lambda: r("random").reduce(torch.ones(1, 4, 2, dtype=torch.long), 1), "must be floating point"),
    (lambda: r("cluster-saliency-static", k=30).reduce(torch.randn(1, 10, 4), 5, saliency=torch.rand(1, 10)),
     "k = 30 clusters is more than the 10 tokens"),
    (lambda: r("cluster-saliency-dynamic", lambda_=0), "lambda_ = 0 is not allowed; allowed: None or a number in (0, inf)"),
    (lambda: r("cluster-saliency-dynamic", lambda_=-1.5), "lambda_ = -1.5 is not allowed"),
    (lambda: r("fastervlm", stage="post-projector").reduce(torch.randn(2, 10, 4), 3, cls_attention=torch.rand(2, 9)),
     "signal 'cls_attention' has shape [2, 9]; expected [B=2, N=10]"),
    (lambda: r("visionzip", stage="post-projector").reduce(torch.randn(1, 10, 4), 3, cls_attention=torch.rand(1, 10)),
     "needs signal(s) vision_keys"),
    # pre-projector (the default for the tower-side baselines): features [B, 1+P, Dv] and tower signals
    (lambda: r("visionzip").reduce(torch.randn(1, 10, 4), 3, cls_attention=torch.rand(1, 10)),
     "needs signal(s) tower_cls_attention, tower_keys"),
    (lambda: r("fastervlm").reduce(torch.randn(2, 10, 4), 3, tower_cls_attention=torch.rand(2, 9)),
     "signal 'tower_cls_attention' has shape [2, 9]; expected [B=2, N=10]"),
    (lambda: r("fastervlm").reduce(torch.randn(1, 10, 4), 9, tower_cls_attention=torch.rand(1, 10),
                                   cls_attention=torch.rand(1, 10)), "does not take signal(s) cls_attention; it takes "
                                                                     "tower_cls_attention"),
    (lambda: r("tome").reduce(torch.randn(1, 10, 4), 9, tower_keys=torch.randn(1, 9, 4)),
     "signal 'tower_keys' has shape [1, 9, 4]; expected [B=1, N=10, *]"),
    (lambda: r("prumerge-plus").reduce(torch.randn(1, 40, 4), 3, tower_last_k=torch.randn(1, 40, 4)),
     "needs signal tower_last_q (or tower_last_cls_attention)"),
    (lambda: r("tome", stage="sideways"),
     "stage = 'sideways' is not allowed; allowed: one of 'pre-projector', 'post-projector'"),
    (lambda: r("tome", steps=1, stage="post-projector").reduce(torch.randn(1, 10, 4), 3,
                                                               vision_keys=torch.randn(1, 10, 4)),
     "ToMe cannot merge 7 tokens in 1 step(s)"),
    (lambda: r("random").reduce(torch.randn(1, 10, 4), 3, cls_attention=torch.rand(1, 10)),
     "does not take signal(s) cls_attention"),
    (lambda: r("saliency").reduce(torch.randn(1, 10, 4), 3), "needs signal 'saliency', or both 'text_embeds' and 'layer0'"),
    (lambda: r("saliency").reduce(torch.randn(1, 10, 8), 3, text_embeds=torch.randn(1, 2, 8),
                                  layer0={"q_weight": torch.eye(8)}), "'layer0' is missing k_weight"),
    (lambda: r("tome", stage="post-projector").reduce(torch.randn(1, 10, 4), 3), "needs signal(s) vision_keys"),
    (lambda: reducers.get("clusteraggregate"), "unknown reducer 'clusteraggregate'; closest: cluster-aggregate"),
    (lambda: reducers.get("random", k=3), "its parameters are none"),
    (lambda: r("cluster-aggregate", order="sideways"), "order = 'sideways' is not allowed; allowed: one of 'random', 'position'"),
    (lambda: r("cluster-aggregate").reduce(torch.randn(1, 10, 4), 2.5), "keep = 2.5 must be an integer"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ReducerError) as e:
        call()
    assert message in str(e.value)


def test_unknown_name_lists_the_names():
    with pytest.raises(ReducerError) as e:
        reducers.get("nope")
    for name in reducers.available():
        assert name in str(e.value)

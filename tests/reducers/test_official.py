"""Conformance with the official implementations: every case of every reference file.

The reference outputs (``$VTC_REFERENCE_DIR``, default ``tests/data/reference/reducers``; its
README describes every case type) hold seeded inputs and what each method's official code
returned for them, in float32 and as float64 twin runs (``*_fp64``). Cases are discovered from
the files (``meta["cases"]``, else the key prefixes before ``__``), one test item per case.
Protocol (the README's): run in float64 and compare indices exactly with the ``*_fp64``
references (the float32 ones where a file has no twin) and values to 1e-9 relative; run in
float32 and compare with the float32 outputs to 1e-5 relative, indices exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import reducers
from reducers import divprune_select, fastv_select, prumerge, tome_merge, tome_schedule

REF_DIR = Path(os.environ.get("VTC_REFERENCE_DIR") or Path(__file__).resolve().parents[1] / "data" / "reference"
               / "reducers")
FILES = ("tome", "visionzip", "prumerge", "divprune", "fastv")
RUNS = ((torch.float64, "_fp64", 1e-9), (torch.float32, "", 1e-5))


def load(name):
    d = np.load(REF_DIR / f"{name}.npz")
    return d, json.loads(str(d["meta_json"]))


def case_names(d, meta) -> list[str]:
    if "cases" in meta:
        return list(meta["cases"])
    return sorted({k.split("__")[0] for k in d.files if "__" in k})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These are small sequential ops; on a shared 2-core machine intra-op threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def discover():
    params = []
    for name in FILES:
        if not (REF_DIR / f"{name}.npz").exists():
            params.append(pytest.param(name, None, id=f"{name}-MISSING"))  # fails: nothing is skipped
            continue
        d, meta = load(name)
        params += [pytest.param(name, case, id=f"{name}-{case}") for case in case_names(d, meta)]
    return params


class Ref:
    """One case: ``ref("x_out", suffix)`` reads ``<case>__x_out<suffix>``, falling back to the
    float32 array where the file has no float64 twin (then the tolerance is float32's)."""

    def __init__(self, d, meta, case):
        self.d, self.meta, self.case = d, meta, case
        self.cm = meta.get("cases", {}).get(case, {})

    def has(self, key):
        return f"{self.case}__{key}" in self.d.files

    def __call__(self, key, suffix=""):
        name = f"{self.case}__{key}"
        if suffix and name + suffix in self.d.files:
            return torch.from_numpy(self.d[name + suffix]), True
        return torch.from_numpy(self.d[name]), not suffix

    def input(self, key, dtype):
        return torch.from_numpy(self.d[f"{self.case}__{key}"]).to(dtype)


def close(got, want, rtol, what):
    """Values to ``rtol`` relative to the reference's largest magnitude."""
    want = want.to(got.dtype)
    scale = float(want.abs().max()) or 1.0
    err = float((got - want).abs().max())
    assert err <= rtol * scale, f"{what}: max |diff| {err:.3g} > {rtol:g} x {scale:.3g}"


def tol(exact_twin, rtol):
    return rtol if exact_twin else 1e-5


@pytest.mark.parametrize("name, case", discover())
def test_reproduces_the_official_code(name, case):
    assert case is not None, f"reference file {REF_DIR / (name + '.npz')} is missing"
    d, meta = load(name)
    CHECKS[name](Ref(d, meta, case))


# ------------------------------------------------------------------------------------- ToMe


def check_tome(ref):
    cm = ref.cm
    cls = bool(cm["class_token"])
    r_list = [int(v) for v in ref.d[f"{ref.case}__r_list"]] if ref.has("r_list") else [int(ref.d[f"{ref.case}__r"])]
    n_in, n_out = int(cm["n_in"]), int(cm["n_out"])
    # the per-step cap, as parse_r's list meets the 50% rule
    t, per_step = n_in, [n_in]
    for r in r_list:
        t -= min(r, (t - cls) // 2)
        per_step.append(t)
    if ref.has("tokens_per_step"):
        assert per_step == ref.d[f"{ref.case}__tokens_per_step"].tolist()
    assert per_step[-1] == n_out
    # the reducer's own schedule for keep = n_out (CLS dropped) merges the same r per step
    effective = [a - b for a, b in zip(per_step, per_step[1:])]
    assert tome_schedule(n_in, n_in - n_out, len(r_list), int(cls)) == effective
    for dtype, suffix, rtol in RUNS:
        metric, x = ref.input("metric", dtype), ref.input("x", dtype)
        size_in = ref.input("size_in", dtype) if ref.has("size_in") else None
        source, size, metric_out = tome_merge(metric, r_list, class_token=cls, size=size_in)
        want_source, twin = ref("source_out", suffix)
        assert torch.equal(source, want_source.bool()), f"{dtype}: merged groups differ"
        rt = tol(twin, rtol)
        want_size, _ = ref("size_out", suffix)
        close(size, want_size, rt, "size_out")
        if ref.has("metric_out"):
            close(metric_out, ref("metric_out", suffix)[0], rt, "metric_out")
        w = torch.ones(x.shape[:2] + (1,), dtype=dtype) if size_in is None else size_in
        x_out = torch.bmm(source.to(dtype), x * w) / size
        close(x_out, ref("x_out", suffix)[0], rt, "x_out")
        if ref.has("unmerge_x_out"):  # every input token gets its output row back
            close(torch.bmm(source.to(dtype).transpose(1, 2), x_out), ref("unmerge_x_out", suffix)[0], rt, "unmerge")
        # the reducer: pre-projector when there is a CLS token (protected, then dropped), else post
        stage = "pre-projector" if cls else "post-projector"
        r = reducers.get("tome", steps=len(r_list), stage=stage)
        sig = {"tower_keys" if cls else "vision_keys": metric}
        red = r.reduce(x, n_out - cls, **sig)
        close(red.features, x_out[:, int(cls):], rt, f"reducer ({stage}) features")
        rows = source[:, int(cls):].to(torch.int64).argmax(1)
        if cls:
            rows[:, 0] = -1
        assert torch.equal(red.assignment, rows)


# ------------------------------------------------------------------------------------- VisionZip


def check_visionzip(ref):
    dominant, contextual = int(ref.cm["dominant"]), int(ref.cm["contextual"])
    keep = dominant + contextual
    r = reducers.get("visionzip", dominant_ratio=dominant / keep)
    for dtype, suffix, rtol in RUNS:
        hidden = ref.input("hidden", dtype)
        red = r.reduce(hidden, keep, tower_cls_attention=ref.input("attn_row0", dtype).mean(1),
                       tower_keys=ref.input("keys", dtype))
        want, twin = ref("out", suffix)
        close(red.features, want, tol(twin, rtol), "out")
        assert torch.equal(red.features[:, 0], hidden[:, 0])  # CLS is kept, first
        # the official second return value: CLS then the top patches (descending score)
        dom = ref("all_indices")[0]
        assert torch.equal(red.kept_indices[:, :dominant], dom.sort(dim=1).values)
        assert torch.all(red.kept_indices[:, dominant:] == -1)
        # the exact linear map: one-hot dominant rows, target 1 + 1/count on its group
        close(red.combination, ref("out_weights")[0], 1e-6, "out_weights")


# ------------------------------------------------------------------------------------- PruMerge


def check_prumerge(ref):
    plus = ref.case.startswith("plus")
    d = ref.d
    for dtype, suffix, rtol in RUNS:
        q, k, h = (torch.from_numpy(d[n]).to(dtype) for n in ("q_layer23", "k_layer23", "hidden_states_m2"))
        a = (torch.bmm(q[:, :1], k.transpose(1, 2)) * h.shape[-1] ** -0.5).softmax(-1)[:, 0, 1:]
        close(a, torch.from_numpy(d["cls_attn"]), 1e-5, "cls_attn")
        comb, kept, assignment, lengths = prumerge(h[:, 1:], a, k[:, 1:], plus=plus)
        want_idx, _ = ref("idx", suffix)
        assert torch.equal(kept, want_idx), f"{dtype}: kept patches differ"
        assert torch.equal((assignment[0] == lengths[0] - 1).nonzero().flatten(), ref("compl")[0][0])
        if "reduction_ratio" in d.files:
            n_top = int(576 * float(d["reduction_ratio"]))
            assert torch.equal(kept[:, :n_top], a.topk(n_top, dim=1).indices)
        want, twin = ref("out", suffix)
        rt = tol(twin, rtol)
        close(torch.bmm(comb, h[:, 1:]), want, rt, "out")
        if plus:  # the reducer, both signal forms
            r = reducers.get("prumerge-plus")
            for sig in ({"tower_last_q": q}, {"tower_last_cls_attention": torch.nn.functional.pad(a, (1, 0))}):
                red = r.reduce(h, 64, tower_last_k=k, **sig)
                assert torch.equal(red.lengths, torch.tensor([want.shape[1]]))
                close(red.features, want, rt, f"reducer out ({', '.join(sig)})")
                assert int(red.assignment[0, 0]) == -1  # CLS dropped


# ------------------------------------------------------------------------------------- DivPrune


def check_divprune(ref):
    n = int(ref.cm["n_selected"])
    for dtype, suffix, _ in RUNS:
        x = torch.from_numpy(ref.d["features"]).to(dtype)
        order = divprune_select(x, n)
        assert torch.equal(order[0], ref("selection_order", suffix)[0])
        red = reducers.get("divprune").reduce(x, n)
        kept = ref("kept_sorted")[0]
        assert torch.equal(red.kept_indices[0], kept)
        close(red.features, ref("kept_features")[0], 0.0, "kept_features")
        if ref.has("seq_keep_indexs"):  # the official block: system prompt, the picks, the text
            sys_len, seq_len = int(ref.meta["sys_token_len"]), int(ref.cm["seq_len_in"])
            seq = torch.cat([torch.arange(sys_len), red.kept_indices[0] + sys_len,
                             torch.arange(sys_len + x.shape[1], seq_len)])
            assert torch.equal(seq, ref("seq_keep_indexs")[0])


# ------------------------------------------------------------------------------------- FastV


def check_fastv(ref):
    cm, case = ref.cm, ref.case
    prefixes = [k.split("__")[0] for k in ref.d.files if k.endswith("__attn_last_row")]
    source = max((p for p in prefixes if case.startswith(p + "_")), key=len)
    start, length = int(cm["image_token_start"]), int(cm.get("image_token_length", 576))
    keep = int(cm["keep_image_tokens"])
    if "hf_fastv_r" in cm:
        assert round(length * (1 - cm["hf_fastv_r"])) == keep
    if "ratio" in cm:
        assert int(length * cm["ratio"]) == keep
    for dtype, suffix, _ in RUNS:
        attn = torch.from_numpy(ref.d[f"{source}__attn_last_row"]).to(dtype)
        kept = fastv_select(attn, start, length, keep)
        if ref.has("image_kept_sorted"):
            assert torch.equal(kept[0], ref("image_kept_sorted", suffix)[0])
        if ref.has("image_topk_order"):
            assert torch.equal(kept[0], ref("image_topk_order", suffix)[0].sort().values)
        seq_len = attn.shape[-1]
        keep_indexs = torch.cat([torch.arange(start), kept[0] + start, torch.arange(start + length, seq_len)])
        assert torch.equal(keep_indexs, ref("keep_indexs", suffix)[0])
        if ref.has("position_ids"):  # original positions, with gaps
            assert torch.equal(keep_indexs.unsqueeze(0), ref("position_ids", suffix)[0])


CHECKS = {"tome": check_tome, "visionzip": check_visionzip, "prumerge": check_prumerge, "divprune": check_divprune,
          "fastv": check_fastv}

"""Rows: builders, identity, and files that survive crashes."""

import json

import pytest

import rows as R


def prow(**kw):
    base = dict(model="m", spec="s", gpu="cpu", reducer="random", keep=8, visual_tokens=64, image="a", batch=1,
                dtype="float32", attn_implementation="sdpa", options={"text_tokens": 64, "reducer_params": {}},
                hook="post-projector", environment={})
    return R.profile_row(**{**base, **kw})


def test_a_torn_last_line_is_cut_before_the_next_append_and_said(tmp_path, capsys):
    out = tmp_path / "run.jsonl"
    R.append_rows(out, [prow(image="a")])
    with open(out, "a") as f:
        f.write('{"schema_version": 2, "kind": "profile", "status": "o')  # a crash mid-write
    assert [r["image"] for r in R.read_rows(out)] == ["a"]  # tolerated when reading
    R.append_rows(out, [prow(image="b")])  # never glued onto the fragment
    assert "removed a partial last line" in capsys.readouterr().err
    assert [r["image"] for r in R.read_rows(out)] == ["a", "b"]
    R.append_rows(out, [prow(image="c")])
    assert [r["image"] for r in R.read_rows(out)] == ["a", "b", "c"] and out.read_text().endswith("\n")


def test_a_whole_last_row_without_its_newline_is_kept(tmp_path, capsys):
    # a crash between the row and its newline: the row is complete, resume counts it as done,
    # so the repair must keep it (cutting it would lose a measured condition for good)
    out = tmp_path / "run.jsonl"
    R.append_rows(out, [prow(image="a"), prow(image="b")])
    out.write_text(out.read_text()[:-1])
    assert [r["image"] for r in R.read_rows(out)] == ["a", "b"]
    R.append_rows(out, [prow(image="c")])
    assert "added it, the row is kept" in capsys.readouterr().err
    assert [r["image"] for r in R.read_rows(out)] == ["a", "b", "c"]


def test_plain_text_is_not_mistaken_for_a_torn_row(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("these are my notes")
    with pytest.raises(R.RowError, match="notes.txt:1: not JSON Lines"):
        list(R.read_rows(f))
    g = tmp_path / "other.jsonl"
    g.write_text(json.dumps({"a": 1}) + "\n")
    with pytest.raises(R.RowError, match="not a row of this suite"):
        list(R.read_rows(g))


def test_identity_includes_reducer_parameters_batch_and_generation_options():
    a = prow()
    assert R.identity(a) == R.identity(prow())
    assert R.identity(a) != R.identity(prow(options={"text_tokens": 64, "reducer_params": {"order": "position"}}))
    assert R.identity(a) != R.identity(prow(batch=2))
    e = dict(benchmark="pope", model="m", spec=None, gpu=None, reducer="random", keep=8, visual_tokens=64,
             hook="post-projector", sample_id="1")
    one = R.eval_row(**e, options={"reducer_params": {}, "max_new_tokens": 8})
    assert R.identity(one) != R.identity(R.eval_row(**e, options={"reducer_params": {}, "max_new_tokens": 16}))
    assert R.identity(one) != R.identity(R.eval_row(**e, options={"reducer_params": {}, "max_new_tokens": 8,
                                                                  "ablate_image": "blank"}))
    with pytest.raises(ValueError, match="no identity for row kind"):
        R.identity({"kind": "nope"})


def test_nan_becomes_null():
    r = prow(prefill_time_s=float("nan"))
    assert r["prefill_time_s"] is None

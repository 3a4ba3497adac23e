import json

import numpy as np
import pytest

import costmodel as cm
from vtc.cli import main


def test_savings_are_fractions_and_grow_as_fewer_tokens_are_kept():
    sw = cm.sweep("llava-1.5-7b", ["h100-sxm", "a100-80gb"], keep=[16, 64, 128, 192, 576], batch=[1, 8])
    for k, s in sw.savings.items():
        assert np.all((s >= 0) & (s <= 1)), k
        if k not in ("weight_bytes", "vision_time_s", "projector_time_s"):
            assert np.all(np.diff(s, axis=2) < 0), k  # more kept -> less saved
    assert np.all(sw.savings["weight_bytes"] == 0)
    assert np.all(sw.savings[k][..., -1] == 0)


def test_sweep_equals_per_configuration_predict():
    sw = cm.sweep("llava-1.5-7b", ["h100-sxm", "l40s"], keep=[32, 300], batch=[1, 4],
                  options=cm.Options(flash_attention=True))
    for gi, gpu in enumerate(sw.gpus):
        for bi, b in enumerate(sw.batch):
            for ki, k in enumerate(sw.keep):
                p = cm.predict("llava-1.5-7b", gpu, keep=int(k), batch=int(b),
                               options=cm.Options(flash_attention=True))
                assert p.reduced.time_s == pytest.approx(sw.reduced["time_s"][gi, bi, ki], rel=1e-12)
                assert p.reduced.ttft_s == pytest.approx(sw.reduced["ttft_s"][gi, bi, ki], rel=1e-12)
                assert p.savings["flops"] == pytest.approx(sw.savings["flops"][gi, bi, ki], rel=1e-12)


def test_retention_rounds_to_visual_tokens():
    assert list(cm.keep_from_retention([0.11, 0.5, 1.0], 576)) == [63, 288, 576]
    p = cm.predict("llava-1.5-7b", "h100-sxm", retention=0.25)
    assert p.keep == 144 and p.reduced.tokens == 144 + 64


def test_vlm_counts_vision_and_projector_unchanged_by_reduction():
    p = cm.predict("llava-1.5-7b", "h100-sxm", keep=64)
    assert p.baseline.vision_time_s == p.reduced.vision_time_s > 0
    assert p.reduced.ttft_s == pytest.approx(p.reduced.vision_time_s + p.reduced.projector_time_s + p.reduced.time_s)
    assert 0 < p.savings["ttft_s"] < p.savings["time_s"]  # the encoder dilutes the saving


def test_flash_attention_counts_causal_pairs_and_less_traffic():
    eager = cm.predict("llama2-7b", "h100-sxm", visual_tokens=576, text_tokens=64)
    flash = cm.predict("llama2-7b", "h100-sxm", visual_tokens=576, text_tokens=64,
                       options=cm.Options(flash_attention=True))
    ops = {o.name: o for o in flash.baseline.per_op}
    L, H, d = 640, 32, 128
    assert ops["fused_attention"].flops == H * (L * (L + 1) / 2) * (4 * d + 5)
    assert ops["fused_attention"].store_act_bytes == L * H * d * 2  # output T*d per head, not T*T
    assert flash.baseline.memory_access_bytes < eager.baseline.memory_access_bytes
    assert flash.baseline.activation_memory_bytes < eager.baseline.activation_memory_bytes


def test_decode_reads_the_whole_cache():
    p = cm.predict("llama2-7b", "h100-sxm", visual_tokens=576, text_tokens=64, keep=64,
                   options=cm.Options(stage="decode"))
    ops = {o.name: o for o in p.baseline.per_op}
    assert ops["q_proj"].flops == 2 * 4096 * 4096
    assert ops["qk_matmul"].load_kv_bytes == 641 * 4096 * 2
    assert p.savings["time_s"] > 0 and p.savings["kv_cache_bytes"] == pytest.approx(1 - 129 / 641)


def test_weight_bytes_follow_parameter_count_and_bits():
    p16 = cm.predict("llama2-7b", "h100-sxm", visual_tokens=576)
    p4 = cm.predict("llama2-7b", "h100-sxm", visual_tokens=576, options=cm.Options(w_bits=4))
    assert p16.baseline.weight_bytes == pytest.approx(6_738_415_616 * 2)  # LLaMA-2-7B's published count
    assert p4.baseline.weight_bytes == pytest.approx(p16.baseline.weight_bytes / 4)


def test_spec_files_are_accepted_where_names_are(tmp_path):
    gpu = tmp_path / "mygpu.toml"
    gpu.write_text('name = "Test GPU"\nmemory_bandwidth_bytes_per_s = 1e12\nmemory_bytes = 1e10\ntdp_w = 100\n'
                   '[peak_ops_per_s]\nbf16 = 1e14\n')
    model = tmp_path / "tiny.json"
    model.write_text(json.dumps({"kind": "llm", "hidden_size": 256, "intermediate_size": 512,
                                 "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000}))
    p = cm.predict(str(model), str(gpu), visual_tokens=100, keep=10)
    assert p.gpu == "mygpu" and p.model == "tiny" and p.reduced.tokens == 74


@pytest.mark.parametrize("kwargs, message", [
    (dict(keep=600), "keep = 600 is more than the 576 visual tokens; allowed: 1..576"),
    (dict(keep=0), "keep = 0 is out of range; allowed: >= 1"),
    (dict(retention=0.0), "retention 0.0 is out of range; allowed: 0 < retention <= 1"),
    (dict(retention=1.5), "retention 1.5 is out of range"),
    (dict(retention=0.0001), "keeps 0 of 576 visual tokens"),
    (dict(text_tokens=0), "text tokens = 0 is out of range"),
    (dict(visual_tokens=-5), "visual tokens = -5 is out of range"),
    (dict(batch=0), "batch = 0 is out of range"),
    (dict(options=cm.Options(w_bits=0)), "w-bits = 0 is out of range; allowed: integers 1..32"),
    (dict(options=cm.Options(kv_bits=64)), "kv-bits = 64 is out of range"),
    (dict(options=cm.Options(stage="train")), "stage 'train' is not allowed"),
])
def test_bad_values_are_named(kwargs, message):
    with pytest.raises(cm.PredictError) as e:
        cm.predict("llava-1.5-7b", "h100-sxm", **kwargs)
    assert message in str(e.value)


def test_unknown_names_suggest_the_closest():
    with pytest.raises(cm.SpecError, match=r"unknown GPU 'h100'; closest: h100-pcie, h100-sxm"):
        cm.predict("llava-1.5-7b", "h100")
    with pytest.raises(cm.SpecError, match=r"unknown model 'llava-7b'; closest: .*llava-1.5-7b"):
        cm.predict("llava-7b", "h100-sxm")


@pytest.mark.parametrize("text, message", [
    ("name = 'x'\nmemory_bandwidth_bytes_per_s = 1e12\n", "malformed spec file"),  # toml ok but...
    ("this is = not toml [", "malformed spec file"),
    ('memory_bandwidth_bytes_per_s = -1\nmemory_bytes = 1\ntdp_w = 1\n[peak_ops_per_s]\nbf16 = 1e12\n',
     "field 'memory_bandwidth_bytes_per_s' = -1: must be > 0"),
    ('memory_bandwidth_bytes_per_s = 1e12\nmemory_bytes = 1\ntdp_w = 1\n[peak_ops_per_s]\nbf17 = 1e12\n',
     "unknown dtype 'bf17'"),
    ('memory_bandwidth_bytes_per_s = "fast"\nmemory_bytes = 1\ntdp_w = 1\n[peak_ops_per_s]\nbf16 = 1\n',
     "must be a number"),
])
def test_malformed_gpu_spec_files(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    if "needs a table" in message or text.startswith("name"):
        message = "needs a table 'peak_ops_per_s'"
    with pytest.raises(cm.SpecError, match=message):
        cm.load_gpu(str(path))


def test_malformed_model_spec_files(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"kind": "llm", "hidden_size": 100, "intermediate_size": 1, "num_hidden_layers": 1,'
                    ' "num_attention_heads": 3, "vocab_size": 10}')
    with pytest.raises(cm.SpecError, match="hidden_size 100 is not divisible by num_attention_heads 3"):
        cm.load_model(str(path))
    path.write_text("{not json")
    with pytest.raises(cm.SpecError, match="malformed spec file"):
        cm.load_model(str(path))
    with pytest.raises(cm.SpecError, match="cannot read spec file"):
        cm.load_model(str(tmp_path / "missing.toml"))


def test_cli_json_interface(capsys):
    assert main(["predict", "--model", "llama2-7b", "--gpu", "h100-sxm", "--visual-tokens", "576",
                 "--text-tokens", "64", "--keep", "64", "--breakdown", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for part in ("baseline", "reduced"):
        for k in ("tokens", "flops", "memory_access_bytes", "activation_memory_bytes", "kv_cache_bytes",
                  "weight_bytes", "time_s"):
            assert isinstance(out[part][k], (int, float)), k
        names = {o["name"] for o in out[part]["per_op"]}
        assert {"q_proj", "qk_matmul", "softmax", "sv_matmul", "mlp_act", "lm_head"} <= names
        for o in out[part]["per_op"]:
            assert {"name", "flops", "memory_access_bytes", "arithmetic_intensity", "bound", "time_s"} <= set(o)
    assert set(out["savings"]) >= {"flops", "time_s", "kv_cache_bytes"}
    assert out["reduced"]["tokens"] == 128


def test_cli_sweep_plot_and_rows(tmp_path, capsys):
    png, rows = tmp_path / "s.png", tmp_path / "r.jsonl"
    assert main(["predict", "--retention", "0.11,0.5,1", "--plot", str(png), "--out", str(rows)]) == 0
    out = capsys.readouterr().out
    assert "TTFT saved (%)" in out and png.stat().st_size > 10_000
    lines = [json.loads(x) for x in rows.read_text().splitlines()]
    assert [r["keep"] for r in lines] == [63, 288, 576] and all(r["kind"] == "prediction" for r in lines)


@pytest.mark.parametrize("argv, message", [
    (["--keep", "700"], "keep = 700 is more than the 576 visual tokens"),
    (["--gpu", "h1000"], "unknown GPU 'h1000'"),
    (["--retention", "2"], "retention 2.0 is out of range"),
    (["--keep", "abc"], "'abc' is not a comma-separated list of integers"),
    (["--w-bits", "40"], "w-bits = 40 is out of range"),
])
def test_cli_errors_are_one_line(capsys, argv, message):
    assert main(["predict", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_cli_list(capsys):
    assert main(["predict", "--list"]) == 0
    out = capsys.readouterr().out
    assert "llava-1.5-7b" in out and "rtx-4090" in out

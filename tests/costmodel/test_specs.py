import costmodel as cm
from costmodel.specs import _catalog


def test_every_catalog_entry_loads():
    for name in cm.gpu_names():
        assert cm.load_gpu(name).peak_ops_per_s["bf16"] > 0
    names = cm.model_names()
    for name in names["vlm"] + names["llm"]:
        assert cm.load_model(name).key == name


def test_every_gpu_figure_has_a_source():
    for name, entry in _catalog("gpus.toml").items():
        numeric = [k for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        missing = [k for k in numeric + ["peak_ops_per_s"] if k not in entry["sources"]]
        assert not missing, (name, missing)
        if "llm_viewer" in entry:
            assert "472f71f" in entry["llm_viewer"]["source"]


def test_every_model_has_a_source():
    for filename in ("llms.toml", "vision.toml", "vlms.toml"):
        for name, entry in _catalog(filename).items():
            assert entry.get("source"), (filename, name)


def test_llava_geometry():
    vlm = cm.load_model("llava-1.5-7b")
    assert vlm.vision.tokens == 577 and vlm.vision.patch_tokens == 576 == vlm.visual_tokens
    assert vlm.projector_dims == [(1024, 4096), (4096, 4096)] and vlm.llm.vocab_size == 32064
    assert cm.load_model("llava-next-7b").visual_tokens == 2880
    assert cm.load_model("llama3-8b").gqa

"""The only room that knows transformers' LLaVA: loading (presets, folders), images, prompts,
signal capture, THE forward path (vision -> projector -> reduce -> assemble -> prefill ->
decode) and the layer-by-layer prefill in-LLM reducers use, and ``compress``: any transformers LLaVA
patched in place to run them under its own ``generate``. Imports ``reducers``,
``costmodel`` (model geometry) and nothing above them."""

from .compress import CompressError, compress, compression, restore
from .forward import NO_TIMER, Runner, identity_reduction, is_in_llm
from .images import ImageError, Preprocess, load_images, read_image
from .layerwise import layerwise_prefill
from .loading import PRESETS, LoadedModel, ModelError, build_preset, load, load_folder
from .prompts import Prefill, Request, RunnerError, make_request, synthetic_prompt, template_prompt
from .signals import needed_signals

__all__ = ["compress", "restore", "compression", "CompressError", "NO_TIMER", "Runner", "identity_reduction",
           "is_in_llm", "ImageError", "Preprocess", "load_images", "read_image", "layerwise_prefill", "PRESETS",
           "LoadedModel", "ModelError", "build_preset", "load", "load_folder", "Prefill", "Request", "RunnerError",
           "make_request", "synthetic_prompt", "template_prompt", "needed_signals"]

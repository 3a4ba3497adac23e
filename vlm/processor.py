"""The files transformers' ``AutoProcessor`` needs beside a LLaVA checkpoint, written from its config.

``AutoProcessor.from_pretrained(folder)`` builds a ``LlavaProcessor`` from them whose
``pixel_values`` are this suite's own preprocessing (:class:`vlm.Preprocess`: shortest side
resized bicubic to the tower's image size, centre crop, CLIP mean and std) and whose ``<image>``
expands to the model's visual tokens (patches + CLS, minus the CLS the ``default`` strategy drops).
The files are the flat layout both transformers 4.x and 5.x read: ``preprocessor_config.json``
(the image processor), ``processor_config.json`` (``patch_size``,
``vision_feature_select_strategy``, ``num_additional_image_tokens``, ``image_token``) and
``chat_template.jinja`` (the LLaVA-1.5 conversation: ``USER: <image>\\n{question} ASSISTANT:``).
"""

from __future__ import annotations

import json
from pathlib import Path

from .images import CLIP_MEAN, CLIP_STD

#: LLaVA-1.5's conversation (llava-hf's template, content as a string or a list of parts)
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] if message['content'] is string else "
    "message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') }} "
    "{%- else -%}{{ message['role'].upper() + ': ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] + ' ' }}"
    "{%- else -%}"
    "{%- for part in message['content'] | selectattr('type', 'equalto', 'image') -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for part in message['content'] | selectattr('type', 'equalto', 'text') -%}{{ part['text'] + ' ' }}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{ eos_token }}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


def processor_files(config: dict, mean=CLIP_MEAN, std=CLIP_STD) -> dict[str, str]:
    """File name -> text, from a LLaVA ``config.json`` (as a dict)."""
    vision = config["vision_config"]
    size, patch = int(vision["image_size"]), int(vision["patch_size"])
    image = {"processor_class": "LlavaProcessor", "image_processor_type": "CLIPImageProcessor",
             "do_resize": True, "size": {"shortest_edge": size}, "resample": 3,
             "do_center_crop": True, "crop_size": {"height": size, "width": size},
             "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
             "image_mean": list(mean), "image_std": list(std), "do_convert_rgb": True}
    processor = {"processor_class": "LlavaProcessor", "image_token": "<image>", "patch_size": patch,
                 "vision_feature_select_strategy": config.get("vision_feature_select_strategy", "default"),
                 "num_additional_image_tokens": 1}  # CLIP's CLS
    return {"preprocessor_config.json": json.dumps(image, indent=2) + "\n",
            "processor_config.json": json.dumps(processor, indent=2) + "\n",
            "chat_template.jinja": CHAT_TEMPLATE}


def write_processor_files(folder: str | Path, mean=None, std=None) -> list[Path]:
    """Write the processor files into a saved LLaVA checkpoint folder. ``mean`` and ``std``
    default to an existing ``preprocessor_config.json``'s, else CLIP's. Returns the paths written."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    old = folder / "preprocessor_config.json"
    prev = json.loads(old.read_text()) if old.is_file() else {}
    mean = mean if mean is not None else prev.get("image_mean", CLIP_MEAN)
    std = std if std is not None else prev.get("image_std", CLIP_STD)
    out = []
    for name, text in processor_files(config, mean, std).items():
        (folder / name).write_text(text)
        out.append(folder / name)
    return out


def load_pretrained(pretrained: str | Path, *, device=None, dtype=None, attn_implementation: str = "sdpa"):
    """(model, processor): transformers' own ``LlavaForConditionalGeneration`` and ``AutoProcessor``
    from a folder or a hub name, on ``device`` (default: CUDA when available), ``dtype`` (default:
    float32 on the CPU, bfloat16 on a GPU), the processor padding on the left (for generation)."""
    import torch
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    from .compress import SUPPORTED, CompressError
    from .loading import parse_dtype

    config = AutoConfig.from_pretrained(pretrained)
    if config.model_type != "llava":
        arch = ", ".join(getattr(config, "architectures", None) or [type(config).__name__])
        raise CompressError(f"{pretrained} holds a {config.model_type!r} model ({arch}); supported: {SUPPORTED}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = parse_dtype(dtype, device)
    model = LlavaForConditionalGeneration.from_pretrained(pretrained, dtype=dtype,
                                                          attn_implementation=attn_implementation)
    processor = AutoProcessor.from_pretrained(pretrained)
    processor.tokenizer.padding_side = "left"
    return model.to(device).eval(), processor

"""Images: reading them, the CLIP preprocessing recipe, and the offline default photos.

The recipe (resize the shortest side with bicubic filtering, centre crop, scale to [0, 1],
normalise with CLIP's mean and std) is implemented here with PIL and numpy, so that it needs no
torchvision and its cost is timed as the ``preprocess`` phase the same way on every machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: real photographs shipped inside scikit-image (they load offline)
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


class ImageError(ValueError):
    """An image that cannot be read, or a folder without images."""


@dataclass(frozen=True)
class Preprocess:
    """CLIP-style preprocessing to a square ``size`` x ``size`` tensor."""

    size: int = 336
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @classmethod
    def from_model_folder(cls, folder: str | Path, size: int) -> "Preprocess":
        """Mean and std from a checkpoint's preprocessor_config.json when it has one."""
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            return cls(size=size)
        cfg = json.loads(path.read_text())
        return cls(size=size, mean=tuple(cfg.get("image_mean", CLIP_MEAN)), std=tuple(cfg.get("image_std", CLIP_STD)))

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> pixel_values [B, 3, size, size] float32."""
        out = []
        for im in images:
            im = im.convert("RGB")
            w, h = im.size
            scale = self.size / min(w, h)
            im = im.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BICUBIC)
            w, h = im.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
            arr = np.asarray(im, dtype=np.float32) / 255.0
            arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
            out.append(torch.from_numpy(arr.transpose(2, 0, 1).copy()))
        return torch.stack(out)


def read_image(path: str | Path) -> Image.Image:
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"image {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"cannot read {str(path)!r} as an image ({type(e).__name__}); "
                         f"allowed: {', '.join(IMAGE_SUFFIXES)}") from None


def load_images(folder: str | Path | None = None, limit: int | None = None) -> list[tuple[str, Image.Image]]:
    """(name, image) pairs: every image file of ``folder`` (sorted), or the scikit-image photos."""
    if folder is None:
        import skimage.data

        names = SKIMAGE_PHOTOS[:limit] if limit else SKIMAGE_PHOTOS
        return [(f"skimage:{n}", Image.fromarray(getattr(skimage.data, n)()).convert("RGB")) for n in names]
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"image folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(f"image folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    files = files[:limit] if limit else files
    return [(p.name, read_image(p)) for p in files]

"""Image preprocessing with PIL and numpy (no torchvision): orientation, RGB, resize, crop, micro-conditioning."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageOps

from amused_lightning.batch import MICRO_CONDS, PIXEL_VALUES


def to_upright_rgb(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation and convert any mode (RGBA, L, P, CMYK, I;16 ...) to RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Converting a transparent palette image straight to RGB warns and garbles.
    if image.mode in ("I", "I;16", "F"):
        image = Image.fromarray(_to_uint8(np.asarray(image)))
    return image.convert("RGB")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Rescale a high-bit-depth grayscale array to 8 bits."""
    values = values.astype(np.float64)
    top = values.max() if values.max() > 255 else 255.0
    return np.clip(values / top * 255.0, 0, 255).astype(np.uint8)


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) once the shorter side is `size`, the longer one truncated as torchvision's Resize(int) does."""
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Bilinear resize so the shorter side equals `size`, keeping the aspect ratio."""
    new_size = shorter_side_size(*image.size, size)
    return image if new_size == image.size else image.resize(new_size, Image.Resampling.BILINEAR)


def has_unique_crop(image: Image.Image, size: int) -> bool:
    """Whether the resized image is already the square crop, so that every random crop is the same."""
    return shorter_side_size(*image.size, size) == (size, size)


def crop_offsets(width: int, height: int, size: int, rng: random.Random | None) -> tuple[int, int]:
    """Top and left of a `size` square: uniform when `rng` is given, centred otherwise."""
    if rng is None:
        return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return rng.randint(0, height - size), rng.randint(0, width - size)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float tensor in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


def preprocess_image(image: Image.Image, resolution: int, rng: random.Random, center_crop: bool = False,
                     random_flip: bool = False, aesthetic_score: float = 6.0) -> dict[str, torch.Tensor]:
    """Pixels and micro_conds [orig_width, orig_height, crop_top, crop_left, aesthetic_score] of one image."""
    image = to_upright_rgb(image)
    orig_width, orig_height = image.size
    image = resize_shorter_side(image, resolution)
    top, left = crop_offsets(image.width, image.height, resolution, None if center_crop else rng)
    image = image.crop((left, top, left + resolution, top + resolution))
    if random_flip and rng.random() < 0.5:
        image = ImageOps.mirror(image)
    micro_conds = torch.tensor([orig_width, orig_height, top, left, aesthetic_score], dtype=torch.float32)
    return {PIXEL_VALUES: pil_to_tensor(image), MICRO_CONDS: micro_conds}

"""Image-to-image and inpainting: the tokens decoding starts from, made from a start image, a strength and a mask as
diffusers' AmusedImg2ImgPipeline and AmusedInpaintPipeline make them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import VQModel
from PIL import Image

from amused_lightning.errors import MissingPathError, SettingError
from amused_lightning.model.draws import Generators, per_image
from amused_lightning.model.encoding import encode_image_tokens, pixels_per_token

IMG2IMG_STRENGTH = 0.5
INPAINT_STRENGTH = 1.0


@dataclass
class StartImages:
    """A start image per prompt (image-to-image), and optionally a mask per prompt, white where it is repainted."""

    images: list[Image.Image]
    masks: list[Image.Image] | None = None
    strength: float | None = None
    """Share of the decoding steps run from the start; None: the pipelines' defaults, 0.5 (img2img), 1.0 (inpaint)."""

    @property
    def effective_strength(self) -> float:
        return strength_or_default(self.strength, self.masks is not None)


def strength_or_default(strength: float | None, inpainting: bool) -> float:
    """`strength`, or the pipelines' default: 0.5 for img2img, 1.0 for inpainting."""
    if strength is not None:
        return strength
    return INPAINT_STRENGTH if inpainting else IMG2IMG_STRENGTH


@dataclass
class DecodingStart:
    """Where decoding begins instead of all-masked tokens at the first step."""

    tokens: torch.Tensor
    """(B, h, w) image tokens, mask_id where decoding draws."""
    first_step: int
    repaint_share: torch.Tensor | None = None
    """(B,) share of the tokens masked by the inpainting mask, which scales inpainting's linear schedule; None: the
    cosine schedule of text-to-image and img2img."""


def read_image(path: str | Path, setting: str) -> Image.Image:
    """The RGB image at `path` (as diffusers' load_image gives it); an error naming `setting` if it cannot be read."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingPathError(f"{setting}={str(path)!r}: no such image file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as error:  # noqa: BLE001 (PIL's decoders raise many types on malformed input)
        raise SettingError(f"{setting}={str(path)!r} is not a readable image ({type(error).__name__}: {error})") \
            from error


def read_mask(path: str | Path, setting: str) -> Image.Image:
    """`read_image` of an inpainting mask, refused if no pixel is white enough to be repainted."""
    mask = read_image(path, setting)
    if mask.convert("L").getextrema()[1] < 128:
        raise SettingError(f"{setting}={str(path)!r} has no white pixel, so nothing would be repainted "
                           "(white repaints, black keeps)")
    return mask


def check_strength(strength: float, num_steps: int, setting: str) -> None:
    """Refuse a strength outside (0, 1], or one so small that no decoding step would run."""
    if not 0.0 < strength <= 1.0:
        raise SettingError(f"{setting}={strength} must lie in (0, 1]: the share of the decoding steps that redraw "
                           "the start image")
    if first_step(num_steps, strength) == num_steps:
        raise SettingError(f"{setting}={strength} with {num_steps} decoding steps runs none of them "
                           f"(int({num_steps} x {strength}) = 0): raise the strength or the steps")


def first_step(num_steps: int, strength: float) -> int:
    """The decoding step a start image enters at: the last int(num_steps · strength) steps run."""
    return num_steps - int(num_steps * strength)


def start_pixels(images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """(B, 3, height, width) pixels in [0, 1] for `size` (width, height): each image stretched to it with Lanczos, as
    VaeImageProcessor's default resize does."""
    arrays = [np.asarray(image.convert("RGB").resize(size, Image.Resampling.LANCZOS), dtype=np.float32) / 255
              for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def repaint_mask(masks: list[Image.Image], grid: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) True where a token is repainted: each mask resized straight to the token grid (Lanczos), made grey,
    white from 0.5 up (AmusedInpaintPipeline's mask processor)."""
    height, width = grid
    arrays = [np.asarray(mask.resize((width, height), Image.Resampling.LANCZOS).convert("L"), dtype=np.float32) / 255
              for mask in masks]
    return torch.from_numpy(np.stack(arrays) >= 0.5)


def noised_tokens(tokens: torch.Tensor, first: int, num_steps: int, mask_id: int,
                  generator: Generators) -> torch.Tensor:
    """img2img's start: each token masked with the probability the cosine schedule leaves masked before step `first`
    (AmusedScheduler.add_noise); at step 0 every token, without a draw, so strength 1 draws from the prompt alone."""
    if first == 0:
        # AmusedImg2ImgPipeline asks add_noise for timesteps[-1] here, whose ratio is cos(π/2): it masks nothing and
        # strength 1 keeps the start image, the opposite of what its documentation promises.
        return torch.full_like(tokens, mask_id)
    ratio = torch.cos(torch.tensor(first) / num_steps * math.pi / 2)
    draw = per_image(lambda rows, one: torch.rand(rows.shape, device=one.device, generator=one).to(rows.device),
                     tokens, generator)
    return tokens.masked_fill(draw < ratio, mask_id)


@torch.no_grad()
def decoding_start(vqvae: VQModel, start: StartImages, size: tuple[int, int], num_steps: int, mask_id: int,
                   generator: Generators) -> DecodingStart:
    """The start images' tokens at `size` (width, height) pixels, masked for img2img or by the masks for
    inpainting."""
    factor = pixels_per_token(vqvae.config)
    device = next(vqvae.encoder.parameters()).device
    tokens = encode_image_tokens(vqvae, start_pixels(start.images, tuple(side - side % factor for side in size))
                                 .to(device))
    first = first_step(num_steps, start.effective_strength)
    if start.masks is None:
        return DecodingStart(noised_tokens(tokens, first, num_steps, mask_id, generator), first)
    repaint = repaint_mask(start.masks, tuple(tokens.shape[1:])).to(device)
    share = repaint.flatten(1).sum(dim=1) / repaint[0].numel()
    return DecodingStart(tokens.masked_fill(repaint, mask_id), first, share)

"""MaskGIT-style iterative decoding as aMUSEd does it, independent of diffusers' deprecated AmusedPipeline."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import UVit2DModel, VQModel
from PIL import Image

from amused_lightning.errors import SettingError
from amused_lightning.model.draws import Generators, per_image
from amused_lightning.model.start_images import DecodingStart


@dataclass
class GenerationSettings:
    """How images are sampled (AmusedPipeline's defaults)."""

    num_inference_steps: int = 12
    """Decoding iterations; each fixes a share of the still-masked tokens."""
    guidance_scale: float = 10.0
    """Classifier-free guidance against the empty prompt; 1 or less turns it off."""
    temperature: tuple[float, float] = (2.0, 0.0)
    """Gumbel noise scale on the confidence, linearly from the first to the last step."""
    aesthetic_score: float = 6.0
    """Aesthetic score in the micro-conditioning."""


def check_generation_settings(settings: GenerationSettings, setting: str) -> None:
    """Reject settings that cannot sample."""
    if settings.num_inference_steps < 1:
        raise SettingError(f"{setting}.num_inference_steps={settings.num_inference_steps} must be at least 1")


def remasked_count(step: int, num_steps: int, seq_len: int, still_masked: torch.Tensor,
                   repaint_share: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens to mask again after `step`: floor(L·cos((step+1)/n·π/2)), below the masked count, at least 1; when
    inpainting floor(L·share·(1 - (step+1)/n)), the linear schedule AmusedInpaintPipeline sets."""
    # float32 as in AmusedScheduler, so products that land on an integer (256·cos(π/3)) floor the same way.
    progress = torch.tensor((step + 1) / num_steps, dtype=torch.float32)
    if repaint_share is None:
        ratio = torch.cos(progress * math.pi / 2)
    else:
        ratio = repaint_share.cpu()[:, None] * (1 - progress)
    count = (seq_len * ratio).floor().long().to(still_masked.device)
    return torch.clamp(torch.minimum(still_masked - 1, count), min=1)


def gumbel(shape_of: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard Gumbel noise, drawn on the generator's device."""
    device = generator.device if generator is not None else shape_of.device
    uniform = torch.zeros_like(shape_of, device=device).uniform_(0, 1, generator=generator).to(shape_of.device)
    return -torch.log((-torch.log(uniform.clamp(1e-20))).clamp(1e-20))


def sample_codes(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B, L) codes drawn from (B, L, C) probabilities, on the generator's device."""
    flat = probs.to(generator.device) if generator is not None else probs
    flat = (flat.float() if flat.device.type == "cpu" else flat).reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).to(probs.device)[:, 0].view(*probs.shape[:-1])


def decode_step(logits: torch.Tensor, tokens: torch.Tensor, step: int, num_steps: int, temperature: float,
                mask_id: int, generator: Generators,
                repaint_share: torch.Tensor | None = None) -> torch.Tensor:
    """Sample every masked token from (B, L, C) logits, then re-mask the least confident ones for the next step."""
    masked = tokens == mask_id
    probs = logits.softmax(dim=-1)
    sampled = torch.where(masked, per_image(sample_codes, probs, generator), tokens)
    if step == num_steps - 1:
        return sampled
    count = remasked_count(step, num_steps, tokens.shape[1], masked.sum(dim=-1, keepdim=True), repaint_share)
    confidence = torch.gather(probs, -1, sampled[:, :, None])[:, :, 0]
    confidence = torch.where(masked, confidence, torch.finfo(confidence.dtype).max)
    noisy = torch.log(confidence.clamp(1e-20)) + temperature * per_image(gumbel, confidence, generator)
    cut_off = torch.gather(torch.sort(noisy, dim=-1).values, 1, count.long())
    return torch.where(noisy < cut_off, mask_id, sampled)


@torch.no_grad()
def generate_tokens(transformer: UVit2DModel, hidden: torch.Tensor, pooled: torch.Tensor,
                    empty_hidden: torch.Tensor, empty_pooled: torch.Tensor, grid: tuple[int, int],
                    image_size: tuple[int, int], settings: GenerationSettings, mask_id: int,
                    generator: Generators, start: DecodingStart | None = None) -> torch.Tensor:
    """(B, h, w) image tokens for prompt embeddings (B, 77, D) / (B, P), decoded from all-masked, or from `start`;
    `image_size` is the (width, height) in pixels the micro-conditioning names, as AmusedPipeline's."""
    batch, guided = hidden.shape[0], settings.guidance_scale > 1.0
    if guided:
        hidden = torch.cat([empty_hidden.expand_as(hidden), hidden])
        pooled = torch.cat([empty_pooled.expand_as(pooled), pooled])
    micro_conds = torch.tensor([*image_size, 0, 0, settings.aesthetic_score], device=hidden.device,
                               dtype=hidden.dtype).expand(hidden.shape[0], -1)
    start = start or DecodingStart(torch.full((batch, *grid), mask_id, dtype=torch.long, device=hidden.device), 0)
    tokens = start.tokens
    temperatures = torch.linspace(*settings.temperature, settings.num_inference_steps)
    for step in range(start.first_step, settings.num_inference_steps):
        logits = transformer(torch.cat([tokens] * 2) if guided else tokens, micro_conds=micro_conds,
                             pooled_text_emb=pooled, encoder_hidden_states=hidden)
        if guided:
            uncond, cond = logits.chunk(2)
            logits = uncond + settings.guidance_scale * (cond - uncond)
        logits = logits.reshape(batch, logits.shape[1], -1).permute(0, 2, 1)
        flat = decode_step(logits, tokens.reshape(batch, -1), step, settings.num_inference_steps,
                           temperatures[step].item(), mask_id, generator, start.repaint_share)
        tokens = flat.reshape(batch, *grid)
    return tokens


@torch.no_grad()
def decode_image_tokens(vqvae: VQModel, tokens: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """(B, h, w) code indices -> (B, 3, H, W) pixels in [0, 1], decoded in fp32, `chunk_size` images per call (all at
    once when None: AmusedPipeline's pixels; smaller chunks bound the activations and agree to fp32 rounding)."""
    if chunk_size is not None and chunk_size < tokens.shape[0]:
        return torch.cat([decode_image_tokens(vqvae, chunk) for chunk in tokens.split(chunk_size)])
    batch, height, width = tokens.shape
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        images = vqvae.decode(tokens, force_not_quantize=True,
                              shape=(batch, height, width, vqvae.config.latent_channels)).sample
    return images.float().clip(0, 1)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) pixels in [0, 1] -> PIL images (rounded as diffusers' image processor does)."""
    array = (images.permute(0, 2, 3, 1).cpu().float().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(image) for image in array]

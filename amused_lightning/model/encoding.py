"""Turn pixels into VQ image tokens and prompts into CLIP conditioning."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import VQModel
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from amused_lightning.model.presets import CLIP_MAX_LENGTH


@dataclass
class FrozenEncoders:
    """What the data side needs of the model, handed over once by `AmusedDataModule.connect`."""

    tokenizer: CLIPTokenizer
    vqvae: VQModel
    text_encoder: CLIPTextModelWithProjection
    identity: str
    """What the encoders' weights depend on (preset and seed, hub id and revision, or local files): the cache key."""
    text_encoder_trains: bool
    """Prompt embeddings change as training goes on: they must not be pre-encoded."""
    token_grid_multiple: int = 1
    """What the sides of a token grid must be multiples of (see `token_grid_multiple`)."""

    @property
    def name(self) -> str:
        """The base model as a message names it (preset, hub id or folder), not its whole cache key."""
        kind, _, rest = self.identity.partition(":")
        return repr(rest.split("@")[0] if kind == "hub" else rest.split(":")[0])


def pixels_per_token(vq_config) -> int:
    """How many pixels one image token spans per side: each VQ encoder level after the first halves the image."""
    return 2 ** (len(vq_config["block_out_channels"]) - 1)


def token_grid_multiple(transformer_config) -> int:
    """What the sides of the transformer's token grid must be multiples of: 2 when it halves the grid inside
    (amused-512, toy), where an odd side comes back one token longer; else 1."""
    return 2 if transformer_config["downsample"] else 1


@torch.no_grad()
def encode_image_tokens(vqvae: VQModel, pixels: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """(B, 3, H, W) pixels in [0, 1] -> (B, h, w) code indices, encoding `chunk_size` images at a time in fp32."""
    chunk_size = chunk_size or pixels.shape[0]
    # The VQ encoder yields NaNs in fp16: run it in fp32 whatever the surrounding autocast says.
    with torch.autocast(device_type=pixels.device.type, enabled=False):
        return torch.cat([_encode_chunk(vqvae, chunk.float()) for chunk in pixels.split(chunk_size)])


def _encode_chunk(vqvae: VQModel, pixels: torch.Tensor) -> torch.Tensor:
    """Code indices of one chunk, shaped by the chunk's own size (the reference reshapes by the whole batch)."""
    latents = vqvae.encode(pixels.to(vqvae.dtype)).latents
    indices = vqvae.quantize(latents)[2][2]
    return indices.reshape(pixels.shape[0], latents.shape[-2], latents.shape[-1])


def tokenize_prompts(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """(B, 77) token ids, padded and truncated to CLIP's context."""
    return tokenizer(prompts, padding="max_length", truncation=True, max_length=CLIP_MAX_LENGTH,
                     return_tensors="pt").input_ids


def encode_prompts(text_encoder: CLIPTextModelWithProjection,
                   input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's penultimate hidden states (cross-attention input) and projected pooled embedding."""
    outputs = text_encoder(input_ids, output_hidden_states=True, return_dict=True)
    return outputs.hidden_states[-2], outputs.text_embeds


def drop_conditioning(hidden: torch.Tensor, pooled: torch.Tensor, empty_hidden: torch.Tensor,
                      empty_pooled: torch.Tensor, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap in the empty prompt's embeddings for the samples where `drop` (B,) is True."""
    hidden = torch.where(drop[:, None, None], empty_hidden.to(hidden.dtype).expand_as(hidden), hidden)
    pooled = torch.where(drop[:, None], empty_pooled.to(pooled.dtype).expand_as(pooled), pooled)
    return hidden, pooled

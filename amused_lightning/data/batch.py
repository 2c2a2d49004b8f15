"""The batch a step receives: its key names and its two forms (pixels, or pre-encoded tokens)."""

from __future__ import annotations

from typing import TypedDict, Union

import torch

PIXEL_VALUES = "pixel_values"
INPUT_IDS = "input_ids"
IMAGE_TOKENS = "image_tokens"
PROMPT_HIDDEN = "encoder_hidden_states"
PROMPT_POOLED = "pooled_text_emb"
MICRO_CONDS = "micro_conds"
POSITION = "position"


class PixelBatch(TypedDict):
    """Images in pixels and prompts as token ids: the step runs the VQ and text encoders itself."""

    pixel_values: torch.Tensor  # (B, 3, H, W) in [0, 1]
    input_ids: torch.Tensor  # (B, 77)
    micro_conds: torch.Tensor  # (B, 5): orig width, orig height, crop top, crop left, aesthetic score
    # (B,) the place of each training sample among its process's draws of the epoch (the resume point), or of each
    # held-out sample among them (its mask seed)
    position: torch.Tensor


class _EncodedPrompts(TypedDict, total=False):
    # Absent while the text encoder trains (the cache then holds token ids instead).
    encoder_hidden_states: torch.Tensor  # (B, 77, D) CLIP's penultimate hidden states
    pooled_text_emb: torch.Tensor  # (B, P) CLIP's projected pooled embedding
    input_ids: torch.Tensor  # (B, 77)


class EncodedBatch(_EncodedPrompts):
    """Image tokens read from the pre-encoded cache, with prompt embeddings or token ids."""

    image_tokens: torch.Tensor  # (B, h, w) VQ code indices
    micro_conds: torch.Tensor
    position: torch.Tensor


Batch = Union[PixelBatch, EncodedBatch]


def is_pre_encoded(batch: Batch) -> bool:
    """Whether the batch carries VQ image tokens rather than pixels."""
    return IMAGE_TOKENS in batch


def has_prompt_embeddings(batch: Batch) -> bool:
    """Whether the batch carries CLIP's outputs rather than prompt token ids."""
    return PROMPT_HIDDEN in batch

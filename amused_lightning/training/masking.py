"""MaskGIT masking for aMUSEd training: cosine mask ratios, exact-count random masks, labels."""

from __future__ import annotations

import math

import torch

IGNORE_INDEX = -100


def cosine_mask_ratio(t: torch.Tensor) -> torch.Tensor:
    """aMUSEd's masking schedule: cos(t·π/2), 1 at t=0 and 0 at t=1."""
    return torch.cos(t * math.pi / 2)


def sample_mask_ratios(batch_size: int, min_masking_rate: float, generator: torch.Generator,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """One mask ratio per image: cosine of t ~ U(0, 1), floored at `min_masking_rate`."""
    t = torch.rand(batch_size, generator=generator, device=device)
    return cosine_mask_ratio(t).clamp(min=min_masking_rate)


def masked_token_counts(ratios: torch.Tensor, seq_len: int) -> torch.Tensor:
    """round(L·ratio) tokens per image, at least one so every image contributes to the loss."""
    return (seq_len * ratios).round().clamp(min=1, max=seq_len).long()


def random_token_mask(ratios: torch.Tensor, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """Boolean (B, L) mask with exactly `masked_token_counts` True entries per row, positions uniform."""
    scores = torch.rand(ratios.shape[0], seq_len, generator=generator, device=ratios.device)
    ranks = scores.argsort(dim=-1).argsort(dim=-1)
    return ranks < masked_token_counts(ratios, seq_len).unsqueeze(-1)


def apply_mask(tokens: torch.Tensor, mask: torch.Tensor, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs (masked positions set to `mask_id`) and labels (true token where masked, ignored elsewhere)."""
    inputs = torch.where(mask, torch.full_like(tokens, mask_id), tokens)
    labels = torch.where(mask, tokens, torch.full_like(tokens, IGNORE_INDEX))
    return inputs, labels

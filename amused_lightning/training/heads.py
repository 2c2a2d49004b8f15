"""UVit2D's output head evaluated only at the masked positions, where the loss needs logits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers import UVit2DModel

_MASKED_HEAD_CLASSES: dict[type, type] = {}


class _MaskedOutputHead:
    """Mixin for ConvMlmLayer: with `only_at` set, returns (M, codebook) logits for the M selected positions.

    The head is pointwise (1x1 conv, RMSNorm, 1x1 conv), so skipping unmasked positions changes no value, and the
    (B, codebook, h, w) logits tensor and its gradient, the largest activations of a step, are never formed.
    """

    only_at: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.only_at is None:
            return super().forward(hidden_states)
        selected = hidden_states.permute(0, 2, 3, 1)[self.only_at]
        selected = F.linear(selected, self.conv1.weight.flatten(1), self.conv1.bias)
        selected = self.layer_norm(selected)
        return F.linear(selected, self.conv2.weight.flatten(1), self.conv2.bias)


def enable_masked_head(transformer: UVit2DModel) -> None:
    """Let `logits_only_at` restrict the output head; parameters and state dict stay as they are."""
    head = transformer.mlm_layer
    if not isinstance(head, _MaskedOutputHead):
        cls = type(head)
        if cls not in _MASKED_HEAD_CLASSES:
            _MASKED_HEAD_CLASSES[cls] = type(f"Masked{cls.__name__}", (_MaskedOutputHead, cls), {})
        head.__class__ = _MASKED_HEAD_CLASSES[cls]


@contextmanager
def logits_only_at(transformer: UVit2DModel, positions: torch.Tensor) -> Iterator[None]:
    """Inside the block the transformer returns (M, codebook) logits for the True entries of (B, h, w) `positions`."""
    head = transformer.mlm_layer
    head.only_at = positions
    try:
        yield
    finally:
        head.only_at = None

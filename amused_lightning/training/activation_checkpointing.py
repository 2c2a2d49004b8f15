"""Activation checkpointing for UVit2DModel that works in training (diffusers' own raises a TypeError)."""

from __future__ import annotations

import torch
from diffusers import UVit2DModel
from torch import nn
from torch.utils.checkpoint import checkpoint

_CHECKPOINTED_CLASSES: dict[type, type] = {}


class _CheckpointedForward:
    """Mixin whose forward recomputes activations in backward instead of storing them."""

    recomputes_in_backward = True  # model/flops.py: a count of model FLOPs runs the plain class (its last base)

    def forward(self, *args, **kwargs):
        if torch.is_grad_enabled():
            # Non-reentrant checkpointing accepts keyword arguments, which UVit2D's blocks are called with.
            return checkpoint(super().forward, *args, use_reentrant=False, **kwargs)
        return super().forward(*args, **kwargs)


def _checkpointed_class(cls: type) -> type:
    """A subclass of `cls` with a checkpointed forward (one per class, so copies and pickles keep working)."""
    if cls not in _CHECKPOINTED_CLASSES:
        _CHECKPOINTED_CLASSES[cls] = type(f"Checkpointed{cls.__name__}", (_CheckpointedForward, cls), {})
    return _CHECKPOINTED_CLASSES[cls]


def checkpointed_blocks(transformer: UVit2DModel) -> list[nn.Module]:
    """The blocks whose activations dominate memory: the 22 transformer layers and the conv down/up blocks."""
    return [*transformer.transformer_layers, transformer.down_block, transformer.up_block]


def enable_gradient_checkpointing(transformer: UVit2DModel) -> None:
    """Checkpoint each block in place; parameters, names and state dict stay as they are."""
    for block in checkpointed_blocks(transformer):
        if not isinstance(block, _CheckpointedForward):
            block.__class__ = _checkpointed_class(type(block))

"""Where frozen weights live: in the autocast dtype, and off the device while a step does not use them."""

from __future__ import annotations

import torch
from torch import nn

# Autocast runs these layers in the low-precision dtype, casting fp32 weights at every call; storing frozen weights
# already cast gives the same numbers with half the memory. Norms and embeddings run in fp32 and are left alone.
AUTOCAST_LAYERS = (nn.Linear, nn.Conv2d)
AUTOCAST_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def cast_frozen_autocast_layers(module: nn.Module, dtype: torch.dtype) -> int:
    """Cast the weights and biases of frozen Linear/Conv2d layers to `dtype`; returns how many tensors changed."""
    changed = 0
    for layer in module.modules():
        if isinstance(layer, AUTOCAST_LAYERS):
            for param in layer.parameters(recurse=False):
                if not param.requires_grad and param.dtype != dtype:
                    param.data = param.data.to(dtype)
                    changed += 1
    return changed


def unused_frozen_parts(vqvae: nn.Module, text_encoder: nn.Module, text_encoder_trains: bool,
                        batch: dict) -> list[nn.Module]:
    """Frozen submodules a training step on `batch` never runs: they need not occupy the device."""
    parts = [vqvae.decoder, vqvae.post_quant_conv]
    if "image_tokens" in batch:
        parts += [vqvae.encoder, vqvae.quant_conv, vqvae.quantize]
    if "encoder_hidden_states" in batch and not text_encoder_trains:
        parts.append(text_encoder)
    return parts

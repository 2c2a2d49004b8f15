"""Memory levers the simulated CUDA peaks point at (scripts/simulate_memory.py, BENCHMARKS.md), all on by default:
each changes where or when tensors live, never a loss or gradient value.

- Gradients are freed right after each optimizer step (`AmusedModule.optimizer_step`, `model.memory.release_gradients`)
  instead of just before the next backward, so a full finetuning run does not carry 2.4 GB of stale gradients
  through validation and the next forward.
- Frozen weights are cast to the compute dtype in `FrozenPlacement.setup`, before the strategy moves the module to
  the device, so they never arrive there in fp32.
- Trained weights that stay in host memory get memory of their own before the first step (`own_host_memory`,
  called by `AmusedModule.setup`) instead of being faulted in page by page by the optimizer's first update.
- Validation sampling brings the text encoder (`on_device`) and the VQ decoder side (`sampling_parts`) to the device
  only while they run, and decodes `model.memory.decode_chunk_size` images at a time (about 0.6 GB of fp32
  activations per 512 px image).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from diffusers import VQModel
from torch import nn


def module_device(module: nn.Module) -> torch.device | None:
    """Where the module's first parameter lives (None: it has none)."""
    first = next(module.parameters(), None)
    return None if first is None else first.device


def own_host_memory(params: Iterable[nn.Parameter]) -> int:
    """Copy each parameter in host memory into memory of its own; how many were copied. A weight loaded from a
    safetensors file maps the file's pages copy-on-write, and the optimizer's first update of it would fault them in
    one 4 KB page at a time: 10 s of the first step for amused-256's 2.4 GB on 2 cores, against 0.9 s to copy them."""
    copied = 0
    for param in params:
        if param.device.type == "cpu":
            param.data = param.data.clone()
            copied += 1
    return copied


@contextmanager
def on_device(modules: list[nn.Module], device: torch.device) -> Iterator[None]:
    """Each module on `device` for the duration, then back where it was (nothing moves if it is there already)."""
    homes = [module_device(module) for module in modules]
    for module, home in zip(modules, homes):
        if home is not None and home != device:
            module.to(device)
    try:
        yield
    finally:
        for module, home in zip(modules, homes):
            if home is not None and home != device:
                module.to(home)


def sampling_parts(vqvae: VQModel) -> list[nn.Module]:
    """The VQ submodules that decoding image tokens runs (the encoder side can stay off the device)."""
    return [vqvae.quantize, vqvae.post_quant_conv, vqvae.decoder]


def encoding_parts(vqvae: VQModel) -> list[nn.Module]:
    """The VQ submodules that encoding pixels into image tokens runs (start images of img2img and inpainting)."""
    return [vqvae.encoder, vqvae.quant_conv, vqvae.quantize]

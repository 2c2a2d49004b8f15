"""Memory levers the simulated CUDA peaks point at (scripts/simulate_memory.py, BENCHMARKS.md): each changes where or
when tensors live, never a loss or gradient value.

- `ReleaseGradients`: Lightning zeroes gradients just before the next backward, so a full finetuning run carries
  a weight-sized set of stale gradients (2.4 GB at the real size) through validation and the next forward. The
  callback frees them as soon as the optimizer has used them.
- `decode_in_chunks`: validation decodes all its images at once in fp32; the VQ decoder's activations at 512 px are
  about 0.6 GB per image. One image at a time bounds them.
- `sampling_parts`: what validation sampling runs of the frozen VQ model (the decoder side, not the encoder).
"""

from __future__ import annotations

import lightning as L
import torch
from diffusers import VQModel
from torch import nn

from amused_lightning.decoding import decode_image_tokens


class ReleaseGradients(L.Callback):
    """Set gradients to None right after each optimizer step instead of before the next backward."""

    def __init__(self):
        self.stepped_at = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        # global_step moves exactly when the optimizer stepped, whatever the accumulation or epoch boundaries.
        if trainer.global_step != self.stepped_at:
            self.stepped_at = trainer.global_step
            for optimizer in trainer.optimizers:
                optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def decode_in_chunks(vqvae: VQModel, tokens: torch.Tensor, chunk_size: int = 1) -> torch.Tensor:
    """`decode_image_tokens` on `chunk_size` images at a time: the same pixels, a fraction of the activations."""
    return torch.cat([decode_image_tokens(vqvae, chunk) for chunk in tokens.split(chunk_size)])


def sampling_parts(vqvae: VQModel) -> list[nn.Module]:
    """The VQ submodules that decoding image tokens runs (the encoder side can stay off the device)."""
    return [vqvae.quantize, vqvae.post_quant_conv, vqvae.decoder]

"""Where frozen weights live: in the autocast dtype, and offloaded to host memory while a step does not use them."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import nn

from amused_lightning.batch import has_prompt_embeddings, is_pre_encoded

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


def cast_frozen_weights(module: nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen Linear/Conv2d weights of the transformer and text encoder in `dtype`; how many changed."""
    # The VQ model is left in fp32: it runs outside autocast (it yields NaNs in fp16).
    return sum(cast_frozen_autocast_layers(part, dtype) for part in (module.transformer, module.text_encoder))


def unused_frozen_parts(vqvae: nn.Module, text_encoder: nn.Module, text_encoder_trains: bool,
                        batch: dict) -> list[nn.Module]:
    """Frozen submodules a training step on `batch` never runs: they need not occupy the device."""
    parts = [vqvae.decoder, vqvae.post_quant_conv]
    if is_pre_encoded(batch):
        parts += [vqvae.encoder, vqvae.quant_conv, vqvae.quantize]
    if has_prompt_embeddings(batch) and not text_encoder_trains:
        parts.append(text_encoder)
    return parts


class FrozenPlacement(L.Callback):
    """Keeps the frozen parts small and out of the way: weights stored in the compute dtype, and parts a training
    step does not run offloaded to host memory until validation needs them back."""

    def __init__(self, offload_frozen: bool = True, frozen_in_compute_dtype: bool = True):
        """
        Args:
            offload_frozen: On a single device, keep frozen parts a step does not use (the VQ decoder; the VQ encoder
                and text encoder when batches are pre-encoded) in host memory, back on the device for validation.
            frozen_in_compute_dtype: Under 16-mixed/bf16-mixed, store frozen Linear/Conv2d weights of the
                transformer and text encoder in that dtype (autocast computes with exactly those values).
        """
        self.offload_frozen, self.frozen_in_compute_dtype = offload_frozen, frozen_in_compute_dtype
        self.cast_tensors = 0
        self._offloaded: list[nn.Module] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        dtype = AUTOCAST_DTYPES.get(str(trainer.precision))
        # Sharding strategies (FSDP, DeepSpeed) own the parameters' storage: leave it to them.
        unsharded = isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy))
        if self.frozen_in_compute_dtype and dtype is not None and unsharded:
            self.cast_tensors = cast_frozen_weights(pl_module, dtype)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        # Once per stretch of training (validation restores the parts). One process only: DDP broadcasts buffers
        # to every rank's device, and would meet them in host memory.
        if not self.offload_frozen or self._offloaded or not isinstance(trainer.strategy, SingleDeviceStrategy):
            return
        parts = unused_frozen_parts(pl_module.vqvae, pl_module.text_encoder, pl_module.text_encoder_trains, batch)
        if pl_module.text_encoder in parts:
            # Conditioning dropout needs the empty prompt's embeddings: encode them while the encoder is here.
            with trainer.precision_plugin.forward_context():
                pl_module.empty_prompt_embeddings()
        for part in parts:
            part.to("cpu")
        self._offloaded = parts

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        self._restore(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._restore(pl_module)

    def _restore(self, pl_module) -> None:
        """Validation decodes images and may encode: offloaded parts return to the training device."""
        for part in self._offloaded:
            part.to(pl_module.device)
        self._offloaded = []

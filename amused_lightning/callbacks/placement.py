"""Where frozen weights live: in the autocast dtype, and in host memory while nothing runs them."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import nn

from amused_lightning.data.batch import has_prompt_embeddings, is_pre_encoded
from amused_lightning.model.memory import module_device

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
    model = module.model
    return sum(cast_frozen_autocast_layers(part, dtype) for part in (model.transformer, model.text_encoder))


def frozen_parts(vqvae: nn.Module, text_encoder: nn.Module, text_encoder_trains: bool) -> list[nn.Module]:
    """The frozen submodules that may be parked in host memory."""
    parts = [vqvae.encoder, vqvae.quant_conv, vqvae.quantize, vqvae.post_quant_conv, vqvae.decoder]
    return parts if text_encoder_trains else [*parts, text_encoder]


def unused_frozen_parts(vqvae: nn.Module, text_encoder: nn.Module, text_encoder_trains: bool,
                        batch: dict) -> list[nn.Module]:
    """Frozen submodules a training or validation step on `batch` never runs: they need not occupy the device."""
    parts = [vqvae.decoder, vqvae.post_quant_conv]
    if is_pre_encoded(batch):
        parts += [vqvae.encoder, vqvae.quant_conv, vqvae.quantize]
    if has_prompt_embeddings(batch) and not text_encoder_trains:
        parts.append(text_encoder)
    return parts


class FrozenPlacement(L.Callback):
    """Keeps the frozen parts small and out of the way: weights stored in the compute dtype before they reach the
    device, and parts a step does not run kept in host memory (sampling brings what it runs in for its duration)."""

    def __init__(self, offload_frozen: bool = True, frozen_in_compute_dtype: bool = True):
        """
        Args:
            offload_frozen: On a single device, keep frozen parts a step does not use (the VQ decoder; the VQ encoder
                and text encoder when batches are pre-encoded) in host memory; validation sampling brings the text
                encoder and the VQ decoder side to the device only while they run.
            frozen_in_compute_dtype: Under 16-mixed/bf16-mixed, store frozen Linear/Conv2d weights of the
                transformer and text encoder in that dtype (autocast computes with exactly those values), cast
                before the strategy moves the module to the device.
        """
        self.offload_frozen, self.frozen_in_compute_dtype = offload_frozen, frozen_in_compute_dtype
        self.cast_tensors = 0

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        # Lightning calls `setup` before the strategy's `model_to_device`: cast here, the fp32 copies never reach
        # the device (in `on_fit_start` the whole module would already be there in fp32).
        dtype = AUTOCAST_DTYPES.get(str(trainer.precision))
        # Sharding strategies (FSDP, DeepSpeed) own the parameters' storage: leave it to them.
        unsharded = isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy))
        if stage == "fit" and self.frozen_in_compute_dtype and dtype is not None and unsharded:
            self.cast_tensors = cast_frozen_weights(pl_module, dtype)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        self._place_for(trainer, pl_module, batch)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._place_for(trainer, pl_module, batch)

    def _place_for(self, trainer: L.Trainer, pl_module, batch: dict) -> None:
        """Frozen parts the step on `batch` runs on the device, the others in host memory (moves only what is not
        where it belongs, so after the first batch this costs nothing)."""
        # One process only: DDP broadcasts buffers to every rank's device, and would meet them in host memory.
        if not self.offload_frozen or not isinstance(trainer.strategy, SingleDeviceStrategy):
            return
        model = pl_module.model
        trains = model.text_encoder_trains
        unused = unused_frozen_parts(model.vqvae, model.text_encoder, trains, batch)
        for part in frozen_parts(model.vqvae, model.text_encoder, trains):
            target = torch.device("cpu") if any(part is u for u in unused) else pl_module.device
            if module_device(part) not in (None, target):
                part.to(target)

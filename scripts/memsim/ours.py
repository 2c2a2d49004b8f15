"""Our training step, simulated on the fake device through AmusedModule's public methods, placed as a fit places it.

What Lightning does around the module is replayed in the order a single-GPU fit does it, calling the real hooks
with the defaults a fit has: FrozenPlacement's `setup` (frozen weights cast to the compute dtype), the strategy's
move of the whole module to the device, the optimizer, then per micro-batch FrozenPlacement's
`on_train_batch_start` (frozen parts the batch does not use parked on the host), the forward under autocast,
`zero_grad` (after the forward: Lightning's order) and the scaled backward, and per step the module's
`optimizer_step` (GradScaler's unscale, step and update, then the gradients released). Validation samples images
for the recipe's prompts as the ValidationImages callback draws them.
"""

from __future__ import annotations

import functools

import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch._subclasses.fake_tensor import unset_fake_temporarily

from amused_lightning.callbacks.placement import FrozenPlacement
from amused_lightning.callbacks.validation_images import validation_pixels
from amused_lightning.model.adapters import LoraSettings
from amused_lightning.model.decoding import GenerationSettings
from amused_lightning.model.encoding import pixels_per_token
from amused_lightning.training.module import AmusedModule
from amused_lightning.training.offload import OffloadedAdamW, OffloadedAdamW8bit
from amused_lightning.training.settings import LRScheduleSettings, MemorySettings, ValidationSettings

from memsim.common import (
    DEVICE,
    SimResult,
    SimRow,
    autocast,
    encoded_batch,
    image_grid,
    pixel_batch,
    simulated_micro_batches,
)
from memsim.fake import built_on_meta, fake_cuda
from memsim.tracker import MemoryTracker


class LoopState:
    """The few trainer attributes the module and FrozenPlacement read (Lightning's Trainer stands behind them in a
    fit): a single-device strategy, the row's precision, where the loop is."""

    def __init__(self, accumulate_grad_batches: int, precision: str):
        self.accumulate_grad_batches, self.global_step = accumulate_grad_batches, 0
        self.global_rank, self.world_size = 0, 1
        self.precision, self.strategy = precision, SingleDeviceStrategy(DEVICE)


class ScaledOptimizer:
    """What a 16-mixed fit hands `optimizer_step`: Lightning's optimizer wrapper, whose `step` runs the closure (the
    micro-batch's forward and backward, already run here) and then the precision plugin's unscale, step and update."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler):
        self.optimizer, self.scaler = optimizer, scaler

    def step(self, closure) -> None:
        closure()
        self.scaler.unscale_(self.optimizer)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)


def optimizer_factory(mode: str, offload: bool) -> functools.partial:
    """The recipe's optimizer as the configs name it on a GPU: fused AdamW, or bitsandbytes' AdamW8bit."""
    if mode == "8bit":
        import bitsandbytes

        return functools.partial(OffloadedAdamW8bit if offload else bitsandbytes.optim.AdamW8bit, lr=1e-5)
    if offload and mode == "full":
        return functools.partial(OffloadedAdamW, lr=1e-5)
    return functools.partial(torch.optim.AdamW, lr=1e-5, fused=True)


def our_module(row: SimRow, offload: bool, inference_steps: int) -> AmusedModule:
    """The row's module with our defaults and its recipe's validation prompts, built on the meta device."""
    lora = LoraSettings(r=16, alpha=row.lora_alpha) if row.mode == "lora" else None
    validation = ValidationSettings([""] * row.validation_prompts, GenerationSettings(inference_steps))
    memory = MemorySettings(gradient_checkpointing=row.checkpointing)
    return built_on_meta(lambda: AmusedModule(pretrained=row.preset, optimizer=optimizer_factory(row.mode, offload),
                                              lora=lora, memory=memory, lr_schedule=LRScheduleSettings(warmup_steps=0),
                                              validation=validation))


def training_batch(module: AmusedModule, row: SimRow, pre_encoded: bool) -> dict[str, torch.Tensor]:
    """A synthetic batch as the data loader hands it to the device."""
    if pre_encoded:
        grid = image_grid(row.resolution, pixels_per_token(module.model.vqvae.config))
        return encoded_batch(row.batch, grid, module.model.text_encoder.config.projection_dim)
    return pixel_batch(row.batch, row.resolution)


def place_for_fit(module: AmusedModule, loop: LoopState, placement: FrozenPlacement,
                  tracker: MemoryTracker) -> torch.optim.Optimizer:
    """FrozenPlacement's `setup` (the cast), the strategy's move to the device, `configure_optimizers`' optimizer."""
    with unset_fake_temporarily():  # the module is still on the meta device, as a real one is still on the host
        placement.setup(loop, module, "fit")
    with tracker.phase("fit start"):
        module.to_empty(device=DEVICE)  # the strategy's `module.to(device)`: `to` would need real data to copy
        module._device = DEVICE  # what that move records
        with unset_fake_temporarily():  # bitsandbytes computes its quantisation maps at construction
            return module.build_optimizer()


def train_steps(module: AmusedModule, optimizer: torch.optim.Optimizer, loop: LoopState, placement: FrozenPlacement,
                row: SimRow, tracker: MemoryTracker, steps: int, pre_encoded: bool) -> None:
    """`steps` optimizer steps of `row.accumulation` micro-batches each, as Lightning's automatic loop runs them."""
    module.trainer = loop
    scaler = torch.amp.GradScaler("cuda", enabled=row.precision == "16-mixed")
    for step in range(steps):
        loop.global_step = step
        for micro in range(simulated_micro_batches(row.accumulation)):
            with tracker.phase("batch to device"):
                batch = training_batch(module, row, pre_encoded)
            batch_idx = step * row.accumulation + micro
            placement.on_train_batch_start(loop, module, batch, batch_idx)
            phase = "forward" if pre_encoded else "forward (VQ and CLIP encoding included)"
            with tracker.phase(phase), autocast(row.precision, cache_enabled=False):
                loss = module.training_step(batch, batch_idx) / row.accumulation
            if micro == 0:
                optimizer.zero_grad(set_to_none=True)
            with tracker.phase("backward"):
                scaler.scale(loss).backward()
            del loss, batch
        with tracker.phase("optimizer step"):
            module.optimizer_step(0, batch_idx, ScaledOptimizer(optimizer, scaler), lambda: None)


def validation_sampling(module: AmusedModule, row: SimRow, tracker: MemoryTracker) -> None:
    """The module's validation images under the precision's autocast, as `on_validation_epoch_end` samples them;
    validation steps on pre-encoded batches run no frozen part, so nothing else moves."""
    with tracker.phase("validation sampling"), autocast(row.precision, cache_enabled=False):
        validation_pixels(module)


def simulate_ours(row: SimRow, steps: int = 2, pre_encoded: bool = True, offload: bool = False,
                  inference_steps: int = 2) -> SimResult:
    """Peak device memory of a fit of `row` with our module at its defaults (`offload`: the host-memory optimizer):
    `steps` optimizer steps, then validation sampling."""
    with fake_cuda() as tracker:
        module, placement = our_module(row, offload, inference_steps), FrozenPlacement()
        loop = LoopState(row.accumulation, row.precision)
        optimizer = place_for_fit(module, loop, placement, tracker)
        train_steps(module, optimizer, loop, placement, row, tracker, steps, pre_encoded)
        if row.validation_prompts:
            validation_sampling(module, row, tracker)
        return SimResult.of(tracker)

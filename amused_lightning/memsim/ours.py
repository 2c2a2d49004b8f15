"""Our training step, simulated on the fake device through AmusedModule's public methods, placed as a fit places it.

What Lightning does around the module is replayed in the order a single-GPU fit does it: the whole module moved
to the device in fp32, `on_fit_start`'s cast of frozen weights, the optimizer, the first batch parking the frozen
parts it does not use, then per micro-batch the forward under autocast, `zero_grad` (after the forward: Lightning
keeps the previous step's gradients through it) and the scaled backward, and per step GradScaler's unscale and
step. Validation brings the frozen parts back and samples images for the recipe's prompts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

from amused_lightning.adapters import LoraSettings
from amused_lightning.args import LRScheduleArgs, MemoryArgs
from amused_lightning.decoding import GenerationSettings, decode_image_tokens, generate_tokens
from amused_lightning.encoding import encode_prompts, pixels_per_token, tokenize_prompts
from amused_lightning.memory import decode_in_chunks, sampling_parts
from amused_lightning.memsim.common import (
    DEVICE,
    SimResult,
    SimRow,
    autocast,
    autocast_dtype,
    encoded_batch,
    image_grid,
    pixel_batch,
    simulated_micro_batches,
)
from amused_lightning.memsim.fake import built_on_meta, fake_cuda, move
from amused_lightning.memsim.tracker import MemoryTracker
from amused_lightning.module import AmusedModule
from amused_lightning.offload import OffloadedAdamW, OffloadedAdamW8bit
from amused_lightning.placement import cast_frozen_weights, unused_frozen_parts


@dataclass(frozen=True)
class Levers:
    """Memory levers of amused_lightning/memory.py and where the module would apply them (all off: today's fit)."""

    cast_before_move: bool = False  # cast frozen weights in `setup`, before the strategy moves the module
    release_gradients: bool = False  # ReleaseGradients: gradients freed right after each optimizer step
    lean_sampling: bool = False  # validation: CLIP on the device only to encode, VQ decoder side only, one image
    offload: bool = False  # full / 8-bit rows: OffloadedAdamW / OffloadedAdamW8bit (state and update on the host)


ALL_LEVERS = Levers(True, True, True, False)


class LoopState:
    """The few trainer attributes a training step reads (Lightning's Trainer stands behind them in a fit)."""

    def __init__(self, accumulate_grad_batches: int):
        self.accumulate_grad_batches, self.global_step, self.global_rank = accumulate_grad_batches, 0, 0


def optimizer_factory(mode: str, offload: bool) -> functools.partial:
    """The recipe's optimizer as the configs name it on a GPU: fused AdamW, or bitsandbytes' AdamW8bit."""
    if mode == "8bit":
        import bitsandbytes

        return functools.partial(OffloadedAdamW8bit if offload else bitsandbytes.optim.AdamW8bit, lr=1e-5)
    if offload and mode == "full":
        return functools.partial(OffloadedAdamW, lr=1e-5)
    return functools.partial(torch.optim.AdamW, lr=1e-5, fused=True)


def our_module(row: SimRow, offload: bool = False) -> AmusedModule:
    """The row's module with our defaults, built on the meta device."""
    lora = LoraSettings(r=16, alpha=row.lora_alpha) if row.mode == "lora" else None
    return built_on_meta(lambda: AmusedModule(pretrained=row.preset, optimizer=optimizer_factory(row.mode, offload),
                                              lora=lora, memory=MemoryArgs(gradient_checkpointing=row.checkpointing),
                                              lr_schedule=LRScheduleArgs(warmup_steps=0)))


def training_batch(module: AmusedModule, row: SimRow, pre_encoded: bool) -> dict[str, torch.Tensor]:
    """A synthetic batch as the data loader hands it to the device."""
    if pre_encoded:
        grid = image_grid(row.resolution, pixels_per_token(module.vqvae.config))
        return encoded_batch(row.batch, grid, module.text_encoder.config.projection_dim)
    return pixel_batch(row.batch, row.resolution)


def place_for_fit(module: AmusedModule, row: SimRow, tracker: MemoryTracker,
                  cast_before_move: bool) -> torch.optim.Optimizer:
    """The strategy's move to the device, `on_fit_start`'s cast (or `setup`'s, before the move) and
    `configure_optimizers`' optimizer."""
    dtype = autocast_dtype(row.precision)
    if cast_before_move and dtype is not None:
        with unset_fake_temporarily():
            cast_frozen_weights(module, dtype)
    with tracker.phase("fit start"):
        module.to_empty(device=DEVICE)
        module._device = DEVICE  # what the strategy's `module.to(device)` records (`to` cannot swap fake tensors)
        if dtype is not None and not cast_before_move:
            cast_frozen_weights(module, dtype)
        with unset_fake_temporarily():  # bitsandbytes computes its quantisation maps at construction
            return module.build_optimizer()


def train_steps(module: AmusedModule, optimizer: torch.optim.Optimizer, row: SimRow, tracker: MemoryTracker,
                steps: int, pre_encoded: bool, release_gradients: bool) -> None:
    """`steps` optimizer steps of `row.accumulation` micro-batches each, as Lightning's automatic loop runs them."""
    loop = LoopState(row.accumulation)
    module.trainer = loop
    scaler = torch.amp.GradScaler("cuda", enabled=row.precision == "16-mixed")
    parked = False
    for step in range(steps):
        loop.global_step = step
        for micro in range(simulated_micro_batches(row.accumulation)):
            with tracker.phase("batch to device"):
                batch = training_batch(module, row, pre_encoded)
            if not parked:  # on_train_batch_start, once
                for part in unused_frozen_parts(module.vqvae, module.text_encoder, module.text_encoder_trains, batch):
                    move(part, "cpu")
                parked = True
            phase = "forward" if pre_encoded else "forward (VQ and CLIP encoding included)"
            with tracker.phase(phase), autocast(row.precision, cache_enabled=False):
                loss = module.training_step(batch, step * row.accumulation + micro) / row.accumulation
            if micro == 0:
                optimizer.zero_grad(set_to_none=True)
            with tracker.phase("backward"):
                scaler.scale(loss).backward()
            del loss, batch
        with tracker.phase("optimizer step"):
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
            if release_gradients:
                optimizer.zero_grad(set_to_none=True)


def validation_sampling(module: AmusedModule, row: SimRow, tracker: MemoryTracker, inference_steps: int,
                        lean: bool) -> None:
    """The frozen parts back on the device and the recipe's prompts sampled and decoded, as `generate` does; `lean`:
    CLIP on the device only while it encodes, only the VQ decoder side back, one image decoded at a time."""
    with tracker.phase("validation sampling"), torch.no_grad(), autocast(row.precision, cache_enabled=False):
        move(module.text_encoder, DEVICE)
        if not lean:
            move(module.vqvae, DEVICE)
        prompts = tokenize_prompts(module.tokenizer, [""] * row.validation_prompts).to(DEVICE)
        hidden, pooled = encode_prompts(module.text_encoder, prompts)
        empty = encode_prompts(module.text_encoder, prompts)
        if lean:
            move(module.text_encoder, "cpu")
        grid = (row.resolution // pixels_per_token(module.vqvae.config),) * 2
        settings = GenerationSettings(num_inference_steps=inference_steps)
        tokens = generate_tokens(module.transformer, hidden, pooled, *empty, grid, row.resolution, settings,
                                 module.mask_id, torch.Generator(device=DEVICE).manual_seed(0))
        if lean:
            for part in sampling_parts(module.vqvae):
                move(part, DEVICE)
            decode_in_chunks(module.vqvae, tokens, 1)
        else:
            decode_image_tokens(module.vqvae, tokens)


def simulate_ours(row: SimRow, steps: int = 2, pre_encoded: bool = True, levers: Levers = Levers(),
                  inference_steps: int = 2) -> SimResult:
    """Peak device memory of a fit of `row` with our module: `steps` optimizer steps, then validation sampling."""
    with fake_cuda() as tracker:
        module = our_module(row, levers.offload)
        optimizer = place_for_fit(module, row, tracker, levers.cast_before_move)
        train_steps(module, optimizer, row, tracker, steps, pre_encoded, levers.release_gradients)
        if row.validation_prompts:
            validation_sampling(module, row, tracker, inference_steps, levers.lean_sampling)
        return SimResult.of(tracker)

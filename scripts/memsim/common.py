"""What the simulations of our step and of the reference's share: a row's description, results, batches, AMP."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from memsim.tracker import MemoryTracker

DEVICE = torch.device("cuda", 0)
CLIP_LENGTH, CLIP_WIDTH = 77, 768


@dataclass(frozen=True)
class SimRow:
    """One training configuration to simulate (a seed row, or a small one for tests)."""

    name: str
    preset: str
    resolution: int
    mode: str  # full, 8bit or lora
    batch: int
    accumulation: int
    checkpointing: bool = True
    lora_alpha: float = 32.0
    precision: str = "16-mixed"
    validation_prompts: int = 0
    instance_image: bool = False  # StyleDrop: one image, its prompt encoded once


@dataclass
class SimResult:
    """Peak simulated bytes, the phase that set it, and each phase's own peak."""

    peak: int
    phase: str
    phase_peaks: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, tracker: MemoryTracker) -> SimResult:
        return cls(tracker.peak, tracker.peak_label, dict(tracker.phase_peaks))


def simulated_micro_batches(accumulation: int) -> int:
    """Micro-batches simulated per optimizer step: from the second on, each holds what the second holds (the
    gradients exist and accumulate in place, the activations are the same), so two give the peak of any number."""
    return min(accumulation, 2)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision string (None: full precision)."""
    return {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)


def autocast(precision: str, cache_enabled: bool) -> torch.autocast:
    """The forward context of `precision` on the fake device. The cache keeps one low-precision copy of every trained
    weight until the context closes: accelerate leaves it on (torch's default), Lightning turns it off."""
    dtype = autocast_dtype(precision)
    return torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None, cache_enabled=cache_enabled)


def image_grid(resolution: int, pixels_per_token: int) -> int:
    """Tokens per side of an image."""
    return resolution // pixels_per_token


def pixel_batch(batch: int, resolution: int, with_prompts: bool = True) -> dict[str, torch.Tensor]:
    """A batch of pixels in [0, 1] and prompt ids, on the device, as a data loader delivers it."""
    sample = {"pixel_values": torch.empty(batch, 3, resolution, resolution, device=DEVICE),
              "micro_conds": torch.empty(batch, 5, device=DEVICE)}
    if with_prompts:
        sample["input_ids"] = torch.zeros(batch, CLIP_LENGTH, dtype=torch.long, device=DEVICE)
    return sample


def encoded_batch(batch: int, grid: int, projection: int = CLIP_WIDTH) -> dict[str, torch.Tensor]:
    """A pre-encoded batch (image tokens and fp32 prompt embeddings), on the device."""
    return {"image_tokens": torch.zeros(batch, grid, grid, dtype=torch.long, device=DEVICE),
            "micro_conds": torch.empty(batch, 5, device=DEVICE),
            "encoder_hidden_states": torch.empty(batch, CLIP_LENGTH, projection, device=DEVICE),
            "pooled_text_emb": torch.empty(batch, projection, device=DEVICE)}


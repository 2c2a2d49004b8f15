"""The training settings in documented groups (`model.<group>.<field>` in a config), and their checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from amused_lightning.errors import SettingError
from amused_lightning.model.decoding import GenerationSettings, check_generation_settings
from amused_lightning.model.start_images import StartImages, check_strength, read_image, read_mask, strength_or_default
from amused_lightning.settings import as_settings
from amused_lightning.training.optim import LR_SCHEDULES


@dataclass
class LRScheduleSettings:
    """How the learning rate moves (its value is `model.optimizer.init_args.lr`)."""

    name: str = "constant"
    """One of constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial."""
    warmup_steps: int = 500
    """Warmup length in optimizer steps."""
    scale_lr: bool = False
    """Multiply the learning rate by batch size x devices x accumulation steps."""

    def __post_init__(self) -> None:
        if self.name not in LR_SCHEDULES:
            raise SettingError(f"model.lr_schedule.name={self.name!r} is not one of {list(LR_SCHEDULES)}")
        if self.warmup_steps < 0:
            raise SettingError(f"model.lr_schedule.warmup_steps={self.warmup_steps} must not be negative")


@dataclass
class ObjectiveSettings:
    """The masked-token objective."""

    min_masking_rate: float = 0.0
    """Lower bound of the per-image mask ratio (drawn from the cosine schedule)."""
    cond_dropout_prob: float = 0.0
    """Probability that a sample trains on the empty prompt instead of its own (what guidance needs)."""
    label_smoothing: float = 0.0
    """Share of each target spread over the whole codebook (open-muse pretrains with 0.1): it bounds the logits of
    codes that never occur at a place, which classifier-free guidance would otherwise amplify into speckles; but a
    sampler that draws from the smoothed distribution draws a wrong code that often (BENCHMARKS.md, toy world)."""
    unconditional_label_smoothing: float | None = None
    """Label smoothing of the samples trained on the empty prompt (`cond_dropout_prob`); None: `label_smoothing`.
    Smoothing only these bounds the unconditional branch that guidance divides by, while the prompted branch stays
    sharp: guidance then sharpens the picture instead of amplifying the codes both branches rule out."""

    def __post_init__(self) -> None:
        for name in ("min_masking_rate", "cond_dropout_prob", "label_smoothing", "unconditional_label_smoothing"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise SettingError(f"model.objective.{name}={value} must lie in [0, 1]")
        if self.unconditional_label_smoothing is not None and self.cond_dropout_prob == 0.0:
            raise SettingError(f"model.objective.unconditional_label_smoothing="
                               f"{self.unconditional_label_smoothing} needs model.objective.cond_dropout_prob above 0")


@dataclass
class MemorySettings:
    """Levers that trade compute for memory or speed; none changes the loss."""

    vq_chunk_size: int | None = None
    """Images per VQ encoder call (bounds its activation memory); all at once when unset."""
    gradient_checkpointing: bool = False
    """Recompute transformer activations in backward to save memory."""
    logits_at_masked_only: bool = True
    """Evaluate the output head only where the loss needs it (same loss, less memory)."""
    compile: bool = False
    """Compile the transformer with torch.compile."""
    release_gradients: bool = True
    """Free the gradients right after each optimizer step rather than before the next backward (same weights)."""
    decode_chunk_size: int | None = 1
    """Validation images per VQ decoder call (each 512 px image holds about 0.6 GB of fp32 activations); all at once
    when unset, as AmusedPipeline decodes. Other sizes give the same pixels to fp32 rounding, far below 1/255."""

    def __post_init__(self) -> None:
        for name in ("vq_chunk_size", "decode_chunk_size"):
            size = getattr(self, name)
            if size is not None and size < 1:
                raise SettingError(f"model.memory.{name}={size} must be a positive number of images")


@dataclass
class ValidationSettings:
    """What each validation scores and draws."""

    prompts: list[str] = field(default_factory=list)
    """Prompts whose images are generated at each validation (fixed seed)."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """Sampling settings of those images (AmusedPipeline's defaults)."""
    mask_ratios: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    """Mask ratios of the held-out loss, each with fixed masks."""
    images: list[str] = field(default_factory=list)
    """Start images, one per prompt, redrawn image-to-image (stretched to the model's resolution); empty: the prompts
    are drawn from nothing."""
    masks: list[str] = field(default_factory=list)
    """Inpainting masks, one per start image: white is repainted, black kept; empty: image-to-image."""
    strength: float | None = None
    """Share of the decoding steps that redraw the start images, in (0, 1]; default 0.5, or 1.0 with masks."""

    def __post_init__(self) -> None:
        self.generation = as_settings(GenerationSettings, self.generation)
        check_generation_settings(self.generation, "model.validation.generation")
        if not self.mask_ratios or not all(0.0 < r <= 1.0 for r in self.mask_ratios):
            raise SettingError(f"model.validation.mask_ratios={self.mask_ratios} must be ratios in (0, 1]")
        self.start_images()  # every file is read now, so a missing one stops the run before it trains

    def start_images(self) -> StartImages | None:
        """The start images (and masks) read from their files; None without images."""
        if not self.images:
            if self.masks or self.strength is not None:
                raise SettingError("model.validation.masks and model.validation.strength need model.validation.images")
            return None
        for name, files in (("images", self.images), ("masks", self.masks)):
            if files and len(files) != len(self.prompts):
                raise SettingError(f"model.validation.{name} has {len(files)} files for {len(self.prompts)} "
                                   "model.validation.prompts: give one per prompt")
        check_strength(strength_or_default(self.strength, bool(self.masks)), self.generation.num_inference_steps,
                       "model.validation.strength")
        images = [read_image(path, f"model.validation.images[{i}]") for i, path in enumerate(self.images)]
        masks = [read_mask(path, f"model.validation.masks[{i}]") for i, path in enumerate(self.masks)]
        return StartImages(images, masks or None, self.strength)

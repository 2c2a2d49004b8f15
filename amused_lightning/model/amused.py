"""A trained aMUSEd pipeline outside training: base components with a run's weights, for drawing and export."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from amused_lightning.callbacks.ema import EMA, resolve_weights
from amused_lightning.errors import MissingPathError, SettingError
from amused_lightning.model.adapters import LoraSettings, add_lora, check_lora_settings, has_lora, load_lora_file
from amused_lightning.model.components import Components, load_components
from amused_lightning.model.decoding import GenerationSettings, generate_images
from amused_lightning.model.start_images import StartImages
from amused_lightning.training.settings import TextEncoderArgs, as_settings

CHECKPOINT_MARK = "amused_lightning"
CHECKPOINT_FORMAT = 2


@dataclass
class ModelSpec:
    """What rebuilds the model a run trains: the base components and the adapters on them."""

    pretrained: str = "tiny"
    revision: str | None = None
    variant: str | None = None
    seed: int = 0
    lora: LoraSettings | None = None
    text_encoder: TextEncoderArgs = field(default_factory=TextEncoderArgs)

    @classmethod
    def from_hparams(cls, hparams: dict[str, Any]) -> ModelSpec:
        """The spec inside a LightningModule's (or a checkpoint's) hyperparameters."""
        return cls(hparams["pretrained"], hparams.get("revision"), hparams.get("variant"), hparams.get("seed", 0),
                   as_settings(LoraSettings, hparams.get("lora")),
                   as_settings(TextEncoderArgs, hparams.get("text_encoder")) or TextEncoderArgs())


def build_trained_parts(spec: ModelSpec) -> Components:
    """The base components with adapters attached and only the trained parameters requiring grad."""
    parts = load_components(spec.pretrained, spec.revision, spec.variant, seed=spec.seed)
    parts.vqvae.requires_grad_(False)
    text_lora = spec.text_encoder.lora
    parts.text_encoder.requires_grad_(spec.text_encoder.train and text_lora is None)
    # Adapters draw their initial weights from the global RNG: text encoder first, then transformer, always.
    if text_lora is not None:
        check_lora_settings(text_lora, parts.text_encoder, "model.text_encoder.lora")
        add_lora(parts.text_encoder, text_lora)
    if spec.lora is not None:
        check_lora_settings(spec.lora, parts.transformer, "model.lora")
        add_lora(parts.transformer, spec.lora)
    return parts


def load_trained_weights(parts: Components, state: dict[str, torch.Tensor]) -> None:
    """Put `transformer.*` / `text_encoder.*` weights (a checkpoint's or an EMA's) into the parts."""
    for prefix in ("transformer", "text_encoder"):
        model = getattr(parts, prefix)
        trained = {name for name, param in model.named_parameters() if param.requires_grad}
        weights = {key[len(prefix) + 1:]: value for key, value in state.items() if key.startswith(prefix + ".")}
        if trained - weights.keys() or weights.keys() - set(model.state_dict()):
            missing = sorted(trained - weights.keys()) or sorted(weights.keys() - set(model.state_dict()))
            raise SettingError(f"the checkpoint's {prefix} weights do not fit this model (for example {missing[:3]}): "
                               "it was written by a different model or finetuning mode")
        with torch.no_grad():
            model.load_state_dict(weights, strict=False)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by `fit`, with clear errors for a missing, unreadable or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as error:  # a file torch cannot read at all
        raise SettingError(f"{str(path)!r} is not a readable PyTorch checkpoint: {error}") from error
    check_checkpoint_mark(checkpoint, repr(str(path)))
    return checkpoint


def check_checkpoint_mark(checkpoint: Any, name: str) -> None:
    """Refuse a checkpoint that `fit` of this version did not write."""
    mark = checkpoint.get(CHECKPOINT_MARK) if isinstance(checkpoint, dict) else None
    if mark is None:
        raise SettingError(f"{name} is not an amused_lightning checkpoint (no {CHECKPOINT_MARK!r} entry)")
    if mark.get("format") != CHECKPOINT_FORMAT:
        raise SettingError(f"{name} has checkpoint format {mark.get('format')}, this version reads format "
                           f"{CHECKPOINT_FORMAT}: export it with the amused_lightning version that wrote it")


class TrainedPipeline:
    """Components holding a run's chosen weights (EMA or trained), adapters attached; draws images."""

    def __init__(self, parts: Components, weights: str = "trained"):
        self.parts, self.weights = parts, weights
        for model in (parts.transformer, parts.vqvae, parts.text_encoder):
            model.requires_grad_(False).eval()

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], weights: str | None = None) -> TrainedPipeline:
        """The base model of the checkpoint's hyperparameters with its trained (or EMA, by default if kept) weights."""
        parts = build_trained_parts(ModelSpec.from_hparams(checkpoint["hyper_parameters"]))
        ema = (checkpoint.get("callbacks") or {}).get(EMA.STATE_KEY) or {}
        chosen = resolve_weights(bool(ema), weights)
        load_trained_weights(parts, ema["shadow"] if chosen == "ema" else checkpoint["state_dict"])
        return cls(parts, chosen)

    @classmethod
    def from_file(cls, path: str | Path, weights: str | None = None) -> TrainedPipeline:
        """`from_checkpoint` of a .ckpt file written by `fit`."""
        return cls.from_checkpoint(read_checkpoint(path), weights)

    @classmethod
    def from_pretrained(cls, pretrained: str, lora_file: Path | None = None) -> TrainedPipeline:
        """A pipeline folder, hub id or preset, with a diffusers-layout LoRA file applied if given."""
        parts = load_components(pretrained)
        if lora_file is not None:
            load_lora_file(lora_file, {"transformer": parts.transformer, "text_encoder": parts.text_encoder})
        return cls(parts)

    @property
    def has_lora(self) -> bool:
        return has_lora(self.parts.transformer) or has_lora(self.parts.text_encoder)

    def to(self, device: torch.device | str) -> TrainedPipeline:
        for model in (self.parts.transformer, self.parts.vqvae, self.parts.text_encoder):
            model.to(device)
        return self

    def generate(self, prompts: list[str], settings: GenerationSettings | None = None, seed: int = 0,
                 resolution: int | tuple[int, int] | None = None, start: StartImages | None = None
                 ) -> list[Image.Image]:
        """Images for `prompts`, sampled as AmusedPipeline does with a generator seeded by `seed`, at `resolution`: a
        square's side or (width, height) (default: the model's square); from `start` images as
        AmusedImg2ImgPipeline (AmusedInpaintPipeline with masks) does."""
        parts = self.parts
        return generate_images(parts.transformer, parts.vqvae, parts.text_encoder, parts.tokenizer, prompts,
                               settings or GenerationSettings(), seed, resolution,
                               parts.transformer.config.vocab_size - 1, start=start)

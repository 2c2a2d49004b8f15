"""What rebuilds the model a run trains: the base components and the finetuning mode on them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from amused_lightning.model.adapters import LoraSettings
from amused_lightning.model.components import resolve_embedded
from amused_lightning.model.finetuning import Finetuning, TextEncoderSettings
from amused_lightning.model.presets import PRESETS
from amused_lightning.settings import as_settings


@dataclass
class ModelSpec:
    """The base model (hub id, folder or preset, with its revision, variant and preset seed) and how it trains."""

    pretrained: str
    revision: str | None = None
    variant: str | None = None
    seed: int = 0
    lora: LoraSettings | None = None
    text_encoder: TextEncoderSettings = field(default_factory=TextEncoderSettings)

    @classmethod
    def from_hparams(cls, hparams: dict[str, Any]) -> ModelSpec:
        """The spec inside a LightningModule's (or a checkpoint's) hyperparameters."""
        return cls(hparams["pretrained"], hparams.get("revision"), hparams.get("variant"), hparams.get("seed", 0),
                   as_settings(LoraSettings, hparams.get("lora")),
                   as_settings(TextEncoderSettings, hparams.get("text_encoder")) or TextEncoderSettings())

    @property
    def finetuning(self) -> Finetuning:
        return Finetuning.of(self.lora, self.text_encoder)

    def identity(self) -> dict[str, Any]:
        """The settings that decide what a run's trained weights mean: base model, finetuning mode, adapters."""
        settings = {"model.pretrained": self.pretrained, "model.revision": self.revision, "model.variant": self.variant}
        if resolve_embedded(self.pretrained) in PRESETS:  # a preset's base weights are drawn from the seed
            settings["seed_everything"] = self.seed
        return {**settings, **self.finetuning.identity()}

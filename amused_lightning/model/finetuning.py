"""The finetuning mode: how each part of the model trains (frozen, fully, or through a LoRA adapter, DoRA and rsLoRA
being LoRA's variants), and all that follows from it: which weights train and are checkpointed, what identifies a
run on resume, what stays out of weight decay, what an export may merge, what the model card says and how the
adapters load. A new mode is one `PartTraining` class."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft.tuners.lora.dora import DoraLinearLayer
from safetensors.torch import save_file
from torch import nn

from amused_lightning.errors import SettingError
from amused_lightning.formats import LORA_WEIGHT_NAME
from amused_lightning.model.adapters import (
    LoraSettings,
    TextEncoderLoraSettings,
    add_lora,
    check_lora_settings,
    lora_metadata,
    lora_state_dict,
)
from amused_lightning.model.components import Components
from amused_lightning.settings import as_settings


@dataclass
class TextEncoderSettings:
    """Whether and how the CLIP text encoder trains (frozen by default)."""

    train: bool = False
    """Train the text encoder too: fully, or its LoRA adapter if `lora` is set."""
    lora: TextEncoderLoraSettings | None = None
    """LoRA on CLIP's attention projections instead of all its weights (needs `train`)."""

    def __post_init__(self) -> None:
        self.lora = as_settings(TextEncoderLoraSettings, self.lora)
        if self.lora is not None and not self.train:
            raise SettingError("model.text_encoder.lora is set but model.text_encoder.train=False: "
                               "set both to train it")


class PartTraining:
    """How one part of the model trains; this base trains all its weights."""

    trains = True
    adapter: LoraSettings | None = None
    no_decay: tuple[type[nn.Module], ...] = ()
    """Module classes whose weights this mode adds that weight decay must leave alone."""

    def apply(self, model: nn.Module, setting: str) -> None:
        """Make exactly the weights this mode trains require grad."""
        model.requires_grad_(True)

    def describe(self, part: str) -> str:
        """What trains, as the model card says it."""
        return f"full finetuning of the {part}"

    def identity(self, setting: str) -> dict[str, Any]:
        """The adapter settings that decide what the trained weights mean (`setting: off` without one)."""
        return {setting: "off"}


class Frozen(PartTraining):
    """The part keeps its base weights."""

    trains = False

    def apply(self, model: nn.Module, setting: str) -> None:
        model.requires_grad_(False)

    def describe(self, part: str) -> str:
        return f"{part} frozen"


class Lora(PartTraining):
    """A LoRA adapter on the part's linear layers trains, the base weights stay (DoRA and rsLoRA as its settings
    say)."""

    def __init__(self, settings: LoraSettings):
        self.adapter = settings
        # DoRA's magnitudes are the norms of the adapted layers' weights: decayed, they would shrink those layers.
        self.no_decay = (DoraLinearLayer,) if settings.use_dora else ()

    def apply(self, model: nn.Module, setting: str) -> None:
        check_lora_settings(self.adapter, model, setting)
        add_lora(model, self.adapter)

    def describe(self, part: str) -> str:
        lora = self.adapter
        scale = "alpha / sqrt(r), rsLoRA" if lora.use_rslora else "alpha / r"
        dora = ", DoRA (magnitudes trained too)" if lora.use_dora else ""
        return (f"LoRA on the {part}: r {lora.r}, alpha {lora.alpha:g} (scale {scale}), targets "
                f"{', '.join(lora.target_modules)}{dora}")

    def identity(self, setting: str) -> dict[str, Any]:
        # The dropout only regularises training: it changes nothing the weights mean.
        lora = self.adapter
        return {setting: "on", f"{setting}.r": lora.r, f"{setting}.alpha": float(lora.alpha),
                f"{setting}.target_modules": sorted(lora.target_modules), f"{setting}.use_dora": lora.use_dora,
                f"{setting}.use_rslora": lora.use_rslora}


def part_training(lora: LoraSettings | None, train: bool = True) -> PartTraining:
    """The mode of a part from its settings: a LoRA adapter when one is set, else all weights or none."""
    if lora is not None:
        return Lora(lora)
    return PartTraining() if train else Frozen()


@dataclass
class Finetuning:
    """How the transformer and the text encoder train (the VQ model never does)."""

    transformer: PartTraining
    text_encoder: PartTraining

    @classmethod
    def of(cls, lora: LoraSettings | None, text_encoder: TextEncoderSettings) -> Finetuning:
        """The mode the settings `model.lora` and `model.text_encoder` describe."""
        return cls(part_training(lora), part_training(text_encoder.lora, text_encoder.train))

    def apply(self, parts: Components) -> None:
        """Freeze what does not train and attach the adapters; only the trained weights require grad after it."""
        parts.vqvae.requires_grad_(False)
        # Adapters draw their initial weights from the global RNG: text encoder first, then transformer, always.
        self.text_encoder.apply(parts.text_encoder, "model.text_encoder.lora")
        self.transformer.apply(parts.transformer, "model.lora")

    @property
    def adapters(self) -> bool:
        """Whether any part trains a LoRA adapter."""
        return self.transformer.adapter is not None or self.text_encoder.adapter is not None

    @property
    def no_decay(self) -> tuple[type[nn.Module], ...]:
        return self.transformer.no_decay + self.text_encoder.no_decay

    def identity(self) -> dict[str, Any]:
        """The settings that decide what the trained weights mean, by their config names."""
        return {**self.transformer.identity("model.lora"), "model.text_encoder.train": self.text_encoder.trains,
                **self.text_encoder.identity("model.text_encoder.lora")}

    def describe(self) -> str:
        """What trained: the transformer fully or its adapter; the text encoder frozen, fully, or its adapter."""
        return f"{self.transformer.describe('transformer')}; {self.text_encoder.describe('text encoder')}"

    def check_export(self, merge_lora: bool, setting: str) -> None:
        """Merging adapters means something only for a run that trained them; unmerged, they must be adapters
        diffusers loads as trained."""
        if merge_lora and not self.adapters:
            raise SettingError(f"{setting} is set but this run trained no LoRA adapter (a full finetune): "
                               "its weights are exported as they are; drop the option")
        # transformers' adapter loading (which diffusers' text-encoder LoRA loading goes through) drops DoRA's
        # magnitude vectors: the adapter would load silently wrong. The transformer's DoRA loads exactly.
        text_lora = self.text_encoder.adapter
        if not merge_lora and text_lora is not None and text_lora.use_dora:
            raise SettingError(f"model.text_encoder.lora.use_dora is set and {setting} is not: diffusers cannot load "
                               "a text-encoder DoRA adapter from a LoRA file (it drops the magnitude vectors); export "
                               "with --merge-lora (export.merge_lora: true), which folds it into the pipeline weights")

    def save_adapters(self, parts: Components, path: Path) -> Path:
        """The LoRA file at `path`: adapters under `transformer.`/`text_encoder.`, their LoraConfig in the metadata
        (alpha included), as diffusers' `load_lora_weights` reads it."""
        tensors, metadata = {}, {}
        for prefix, model in (("transformer", parts.transformer), ("text_encoder", parts.text_encoder)):
            if getattr(self, prefix).adapter is not None:
                tensors.update({f"{prefix}.{k}": v.detach().cpu().contiguous()
                                for k, v in lora_state_dict(model).items()})
                metadata.update({f"{prefix}.{k}": v for k, v in lora_metadata(model).items()})
        save_file(tensors, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(metadata)})
        return path

    def loading_code(self, where: str) -> tuple[list[str], list[str]]:
        """(imports, lines) of the Python that loads the adapters of an unmerged export onto `pipe`."""
        imports, lines = [], []
        if self.transformer.adapter is not None:
            lines.append(f'pipe.transformer.load_lora_adapter("{where}", prefix="transformer", '
                         f'weight_name="{LORA_WEIGHT_NAME}")')
        if self.text_encoder.adapter is not None:
            imports.append("from diffusers.loaders import AmusedLoraLoaderMixin")
            lines += [f'state_dict, alphas, metadata = AmusedLoraLoaderMixin.lora_state_dict("{where}", '
                      f'weight_name="{LORA_WEIGHT_NAME}", return_lora_metadata=True)',
                      "AmusedLoraLoaderMixin.load_lora_into_text_encoder(state_dict, alphas, pipe.text_encoder, "
                      'prefix="text_encoder", metadata=metadata)']
        return imports, lines

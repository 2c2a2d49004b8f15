"""LoRA adapters through peft: on the UVit2D transformer and on CLIP's attention projections."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from torch import nn

from amused_lightning.errors import SettingError


@dataclass
class LoraSettings:
    """LoRA on the transformer (the reference's --use_lora defaults)."""

    r: int = 16
    """Rank of the low-rank update."""
    alpha: float = 32.0
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter's input."""
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v"])
    """Linear layers that get an adapter, as peft matches them: last name components ("to_q"), or ends of full names
    ("attn2.to_k": the cross-attention's only)."""
    use_dora: bool = False
    """DoRA: also train a magnitude per output feature of each adapted layer (peft's use_dora)."""
    use_rslora: bool = False
    """rsLoRA: scale the update by alpha / sqrt(r) instead of alpha / r (peft's use_rslora)."""


@dataclass
class TextEncoderLoraSettings(LoraSettings):
    """LoRA on the CLIP text encoder, aimed at CLIP's own attention projections."""

    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])
    """CLIP's linear layers that get an adapter: last name components, or ends of full names."""


def lora_config(settings: LoraSettings) -> LoraConfig:
    """The peft config of `settings`."""
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=list(settings.target_modules), init_lora_weights=True,
                      use_dora=settings.use_dora, use_rslora=settings.use_rslora)


def check_lora_settings(settings: LoraSettings, model: nn.Module, setting: str) -> None:
    """Reject a rank, alpha or dropout out of range, or a target that names no linear layer of `model`."""
    if settings.r < 1 or settings.alpha <= 0 or not 0.0 <= settings.dropout < 1.0:
        raise SettingError(f"{setting}: r={settings.r} must be >= 1, alpha={settings.alpha} > 0 and "
                           f"dropout={settings.dropout} in [0, 1)")
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    linear_names = {name.rsplit(".", 1)[-1] for name in linear}
    # As peft matches them: a target is a layer's full name or its end after a dot ("to_k", "attn2.to_k").
    unmatched = [target for target in settings.target_modules
                 if not any(name == target or name.endswith(f".{target}") for name in linear)]
    if unmatched or not settings.target_modules:
        raise SettingError(f"{setting}.target_modules={list(settings.target_modules)}: {unmatched or 'empty'} "
                           f"match no linear layer; choose among {sorted(linear_names)}")


def add_lora(model: nn.Module, settings: LoraSettings) -> None:
    """Freeze `model` and inject a trainable LoRA adapter named "default"."""
    model.requires_grad_(False)
    inject_adapter_in_model(lora_config(settings), model, adapter_name="default")
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter weights with peft's adapter name stripped (the layout diffusers' LoRA loaders read)."""
    return get_peft_model_state_dict(model, adapter_name="default")


def lora_metadata(model: nn.Module) -> dict:
    """The adapter's LoraConfig as a JSON-ready dict, so a loader restores alpha and targets exactly."""
    config = model.peft_config["default"].to_dict()
    return {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}


def has_lora(model: nn.Module) -> bool:
    """Whether any layer of `model` carries a LoRA adapter."""
    return any(isinstance(m, LoraLayer) for m in model.modules())


def plain_state_dict(model: nn.Module, merge_lora: bool) -> dict[str, torch.Tensor]:
    """Weights without adapter modules: base weights, with the LoRA update folded in when `merge_lora`."""
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if merge_lora:
        for layer in layers:
            layer.merge()
    try:
        # Copies only where merging changes the live weights (they are unmerged below); else views are enough.
        return {key.replace(".base_layer.", "."): value.detach().cpu().clone() if merge_lora else value.detach().cpu()
                for key, value in model.state_dict().items() if "lora_" not in key}
    finally:
        for layer in layers if merge_lora else ():
            layer.unmerge()


def load_lora_file(path: Path, models: dict[str, nn.Module]) -> list[str]:
    """Inject and load the adapters of a LoRA safetensors file into `models` (by prefix); returns the prefixes."""
    with safe_open(str(path), framework="pt") as file:
        metadata = json.loads((file.metadata() or {}).get("lora_adapter_metadata", "{}"))
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    loaded = []
    for prefix, model in models.items():
        state = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        if not state:
            continue
        config = {k[len(prefix) + 1:]: v for k, v in metadata.items() if k.startswith(prefix + ".")}
        if not config:
            raise SettingError(f"{path}: no LoRA config for {prefix!r} in the file's metadata (lora_adapter_metadata)")
        inject_adapter_in_model(LoraConfig(**config), model, adapter_name="default")
        result = set_peft_model_state_dict(model, state, adapter_name="default")
        if getattr(result, "unexpected_keys", None):
            raise SettingError(f"{path}: {prefix} weights that fit no adapter: {result.unexpected_keys[:3]}")
        loaded.append(prefix)
    if not loaded:
        raise SettingError(f"{path} holds no transformer. or text_encoder. LoRA weights")
    return loaded

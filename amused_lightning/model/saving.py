"""The parts of an exported pipeline written to disk: clean copies of trained parts, a diffusers model's files written
behind, and the base's unchanged parts copied file by file (`write_behind`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import ModelMixin, UVit2DModel
from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME
from huggingface_hub import split_torch_state_dict_into_shards
from torch import nn

from amused_lightning.model.adapters import plain_state_dict
from amused_lightning.write_behind import copy_behind, save_safetensors

SHARD_SIZE = "10GB"
"""The largest weights file of a saved model before it is split, as diffusers' `save_pretrained` splits by default."""


def clean_copy(cls, model: nn.Module, merge_lora: bool) -> nn.Module:
    """A `cls` from `model`'s config holding its (optionally merged) weights, no adapters, no wrappers: for saving.
    Built on the meta device and handed the weights themselves, so no random initialisation is spent on weights
    it replaces; non-persistent buffers (CLIP's position ids), which no file holds, stay on the meta device."""
    with torch.device("meta"):
        fresh = cls.from_config(model.config) if cls is UVit2DModel else cls(model.config)
    fresh.load_state_dict(plain_state_dict(model, merge_lora), assign=True)
    return fresh


def save_diffusers_model(model: ModelMixin, folder: Path) -> Path:
    """The files diffusers' `save_pretrained` writes for `model` (config.json, diffusion_pytorch_model.safetensors,
    split into shards with an index past SHARD_SIZE), each weights file written behind. Returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    pattern = SAFETENSORS_WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors")
    split = split_torch_state_dict_into_shards(state, max_shard_size=SHARD_SIZE, filename_pattern=pattern)
    for filename, names in split.filename_to_tensors.items():
        save_safetensors({name: state[name] for name in names}, folder / filename, {"format": "pt"})
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
        (folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return folder


def copy_part(base: Path, name: str, folder: Path) -> Path:
    """The base pipeline's subfolder `name` copied into `folder`, its files written behind. Returns the copy."""
    return Path(shutil.copytree(base / name, folder / name, dirs_exist_ok=True, copy_function=copy_behind))

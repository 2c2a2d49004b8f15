"""Turn a run checkpoint into diffusers files: a LoRA safetensors file and/or a complete AmusedPipeline folder.

    python -m amused_lightning export runs/x/checkpoints/last.ckpt out/ [--weights ema|trained] [--merge-lora]
"""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path

import diffusers
import lightning as L
import torch
from diffusers import UVit2DModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPTextModelWithProjection

from amused_lightning.adapters import lora_metadata, lora_state_dict
from amused_lightning.components import SUBFOLDERS
from amused_lightning.ema import holding, resolve_weights
from amused_lightning.module import CHECKPOINT_MARK, AmusedModule

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
MODEL_INDEX = {
    "_class_name": "AmusedPipeline",
    "scheduler": ["diffusers", "AmusedScheduler"],
    "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "transformer": ["diffusers", "UVit2DModel"],
    "vqvae": ["diffusers", "VQModel"],
}
EXPORT_MARKERS = (LORA_WEIGHT_NAME, "model_index.json", *SUBFOLDERS)


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in model.modules())


def write_lora_file(module: AmusedModule, folder: Path) -> Path:
    """Adapters under `transformer.`/`text_encoder.` with their LoraConfig in the metadata (alpha included)."""
    tensors, metadata = {}, {}
    for prefix, model in (("transformer", module.transformer), ("text_encoder", module.text_encoder)):
        if has_lora(model):
            tensors.update({f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in lora_state_dict(model).items()})
            metadata.update({f"{prefix}.{k}": v for k, v in lora_metadata(model).items()})
    path = folder / LORA_WEIGHT_NAME
    save_file(tensors, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(metadata)})
    return path


def plain_state_dict(model: nn.Module, merge_lora: bool) -> dict[str, torch.Tensor]:
    """Weights without adapter modules: base weights, with the LoRA update folded in when `merge_lora`."""
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if merge_lora:
        for layer in layers:
            layer.merge()
    try:
        return {key.replace(".base_layer.", "."): value.detach().cpu().clone()
                for key, value in model.state_dict().items() if "lora_" not in key}
    finally:
        for layer in layers if merge_lora else ():
            layer.unmerge()


def clean_copy(cls, model: nn.Module, merge_lora: bool) -> nn.Module:
    """A fresh `cls` from `model`'s config with its (optionally merged) weights: no adapters, no wrappers."""
    fresh = cls.from_config(model.config) if cls is UVit2DModel else cls(model.config)
    fresh.load_state_dict(plain_state_dict(model, merge_lora))
    return fresh


def write_pipeline(module: AmusedModule, folder: Path, merge_lora: bool) -> Path:
    """A folder `AmusedPipeline.from_pretrained` loads; unmerged adapters go beside it as the LoRA file."""
    clean_copy(UVit2DModel, module.transformer, merge_lora).save_pretrained(folder / "transformer")
    clean_copy(CLIPTextModelWithProjection, module.text_encoder, merge_lora).save_pretrained(folder / "text_encoder")
    module.vqvae.save_pretrained(folder / "vqvae")
    module.tokenizer.save_pretrained(folder / "tokenizer")
    module.noise_scheduler.save_pretrained(folder / "scheduler")
    index = {**MODEL_INDEX, "_diffusers_version": diffusers.__version__}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def prepare_output(folder: Path, overwrite: bool) -> None:
    """Create `folder`; refuse one that holds an export unless `overwrite`, then remove only export files."""
    present = [name for name in EXPORT_MARKERS if (folder / name).exists()]
    if present and not overwrite:
        raise FileExistsError(f"{str(folder)!r} already holds an export ({', '.join(present)}): "
                              "pass --overwrite to replace it, or choose another folder")
    for name in present:
        target = folder / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def export_module(module: AmusedModule, folder: Path, weights: str | None = None, merge_lora: bool = False,
                  overwrite: bool = False) -> list[Path]:
    """The pipeline folder of `module`'s `weights` (ema, trained, or None: ema when kept), plus, for unmerged
    adapters, the LoRA file."""
    written = []
    with holding(module, weights):
        prepare_output(folder, overwrite)
        # A merged pipeline already holds the adapters: a LoRA file beside it would be applied twice.
        if not merge_lora and (has_lora(module.transformer) or has_lora(module.text_encoder)):
            written.append(write_lora_file(module, folder))
        written.append(write_pipeline(module, folder, merge_lora))
    return written


def full_precision_copy(module: AmusedModule) -> AmusedModule:
    """`module` rebuilt from `pretrained` with its trained and EMA weights: frozen weights as stored, not as cast."""
    fresh = AmusedModule(**{k: v for k, v in module.hparams.items() if not k.startswith("_")})
    keys = module.trained_state_keys()
    fresh.load_state_dict({k: v for k, v in module.state_dict().items() if k in keys}, strict=False)
    if module.ema is not None:
        fresh.ema.load_state_dict(module.ema.state_dict())
    return fresh


class FinalExport(L.Callback):
    """At the end of `fit`, export the final weights to <default_root_dir>/export (replacing this run's own)."""

    def __init__(self, enabled: bool = True, weights: str = "auto", merge_lora: bool = False):
        """
        Args:
            enabled: Write the export when fit ends.
            weights: "ema", "trained", or "auto" (ema when the run keeps one).
            merge_lora: Fold LoRA adapters into the exported pipeline weights.
        """
        if weights not in ("auto", "ema", "trained"):
            raise ValueError(f"export.weights={weights!r} must be 'auto', 'ema' or 'trained'")
        self.enabled, self.weights, self.merge_lora = enabled, weights, merge_lora

    def on_fit_end(self, trainer: L.Trainer, pl_module: AmusedModule) -> None:
        if not (self.enabled and trainer.is_global_zero):
            return
        weights = resolve_weights(pl_module.ema, self.weights)
        folder = Path(trainer.default_root_dir) / "export"
        module = full_precision_copy(pl_module) if pl_module.frozen_weights_cast else pl_module
        for path in export_module(module, folder, weights, self.merge_lora, overwrite=True):
            print(f"exported {weights} weights to {path}")


def load_checkpoint_module(path: str | Path) -> AmusedModule:
    """The run's module rebuilt from a checkpoint: base components from its `pretrained`, trained weights on top."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        # Memory-mapped: only the small header entries are read to tell whether the file is ours.
        ours = CHECKPOINT_MARK in torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as error:  # a file torch cannot read at all
        raise ValueError(f"{str(path)!r} is not a readable PyTorch checkpoint: {error}") from error
    if not ours:
        raise ValueError(f"{str(path)!r} is not an amused_lightning checkpoint (no {CHECKPOINT_MARK!r} entry)")
    with warnings.catch_warnings():
        # The frozen parts are absent on purpose; on_load_checkpoint checks that every trained weight is there.
        warnings.filterwarnings("ignore", message="Found keys that are in the model state dict but not in")
        return AmusedModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m amused_lightning export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .ckpt written by `fit`")
    parser.add_argument("output", type=Path, help="folder to write the LoRA file and pipeline into")
    parser.add_argument("--weights", choices=("ema", "trained"), default=None,
                        help="EMA or raw trained weights (default: ema when the run kept one)")
    parser.add_argument("--merge-lora", action="store_true",
                        help="fold LoRA adapters into the pipeline weights (then no separate LoRA file is written)")
    parser.add_argument("--overwrite", action="store_true", help="replace an export already in the folder")
    args = parser.parse_args(argv)
    written = export_module(load_checkpoint_module(args.checkpoint), args.output, args.weights, args.merge_lora,
                            args.overwrite)
    for path in written:
        print(f"wrote {path}")
    return written

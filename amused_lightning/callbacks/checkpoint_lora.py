"""Checkpoints with their LoRA file: beside each checkpoint of a LoRA run, the adapters in diffusers' layout (the file
an unmerged export holds), so that any step can be tried or shared without exporting a pipeline; removed with it."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import lightning as L

from amused_lightning.callbacks.checkpoints import RunCheckpoints
from amused_lightning.callbacks.ema import find_ema
from amused_lightning.formats import CHECKPOINT_LORA_SUFFIX
from amused_lightning.permissions import honour_umask


def lora_path(checkpoint: str | Path) -> Path:
    """The LoRA file beside a checkpoint: runs/x/checkpoints/step=200.ckpt -> step=200.lora.safetensors."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + CHECKPOINT_LORA_SUFFIX)


class LoraCheckpoint(RunCheckpoints):
    """The run's checkpoints (RunCheckpoints: they follow a moved run folder) and, beside every checkpoint of a run
    that trains LoRA adapters, those adapters as a LoRA file (the EMA's when the run keeps one, as an export would
    choose), deleted with its checkpoint (the newest-K rotation, a moved `last`)."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        model = trainer.lightning_module.model
        if not (trainer.is_global_zero and model.spec.finetuning.adapters):
            return
        ema = find_ema(trainer)
        with ema.average.swapped_in(model) if ema is not None and ema.average is not None else nullcontext():
            honour_umask(model.spec.finetuning.save_adapters(model.parts, lora_path(filepath)))

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            lora_path(filepath).unlink(missing_ok=True)

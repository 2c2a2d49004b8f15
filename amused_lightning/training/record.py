"""What a fit records of itself beside its hyperparameters, for the model card of a later export; and the run
checkpoint of a fit that just ended, taken from the fit itself."""

from __future__ import annotations

from typing import Any

import lightning as L

from amused_lightning.callbacks.ema import find_ema
from amused_lightning.run.checkpoint import RunCheckpoint
from amused_lightning.training.optim import class_path


def run_record(trainer: L.Trainer) -> dict[str, Any]:
    """What the module's hyperparameters do not say of a run: precision, processes, accumulation, rows, rate, EMA."""
    group = trainer.optimizers[0].param_groups[0] if trainer.optimizers else {}
    ema = find_ema(trainer)
    return {"precision": str(trainer.precision), "devices": trainer.world_size,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "train_rows": dataset_rows(getattr(trainer, "datamodule", None)),
            "lr": group.get("initial_lr", group.get("lr")), "weight_decay": group.get("weight_decay"),
            "ema_decay": ema.settings.decay if ema is not None else None}


def dataset_rows(datamodule: Any) -> int | None:
    """Rows of the training set, when the data has a length."""
    try:
        return len(datamodule.train_dataset)
    except (AttributeError, TypeError):
        return None


def fit_checkpoint(trainer: L.Trainer, module: L.LightningModule) -> RunCheckpoint:
    """The run checkpoint of the fit's last step: its settings, trained weights and their EMA, and its record."""
    ema = find_ema(trainer)
    datamodule = getattr(trainer, "datamodule", None)
    return RunCheckpoint(dict(module.hparams), module.model.trained_state(),
                         ema.state_dict().get("shadow") if ema is not None else None, trainer.global_step,
                         dict(datamodule.hparams) if datamodule is not None else {},
                         class_path(trainer.optimizers[0]) if trainer.optimizers else None, run_record(trainer))

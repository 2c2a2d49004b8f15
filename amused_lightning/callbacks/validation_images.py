"""Validation images to every logger of the trainer, each through its own image API (a callback, so the module knows
no logger)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import lightning as L
import numpy as np
from lightning.pytorch.loggers import CometLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from amused_lightning.training.validation import ValidationImages

log = logging.getLogger(__name__)

KEY = "val_images"


def image_tags(prompts: list[str]) -> list[str]:
    """`val_images/NN <prompt>`: the reading order and the prompt in each image's name."""
    return [f"{KEY}/{i:02d} {prompt}" for i, prompt in enumerate(prompts)]


MLFLOW_KEY_LENGTH = 200  # MLflow puts the key in a file name, which most file systems cap at 255 bytes


def mlflow_key(tag: str) -> str:
    """An MLflow image key for a tag: ASCII letters, digits and `_-. /` only (MLflow refuses others), and short
    enough for a file name."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", tag)[:MLFLOW_KEY_LENGTH]


def to_tensorboard(logger: TensorBoardLogger, shown: ValidationImages) -> None:
    """One image per tag, at the validation's step."""
    for tag, image in zip(image_tags(shown.prompts), shown.images):
        logger.experiment.add_image(tag, np.asarray(image), shown.step, dataformats="HWC")


def to_wandb(logger: WandbLogger, shown: ValidationImages) -> None:
    """All images under one key, each captioned with its prompt."""
    logger.log_image(KEY, list(shown.images), step=shown.step, caption=list(shown.prompts))


def to_mlflow(logger: MLFlowLogger, shown: ValidationImages) -> None:
    """MLflow's images with a step (MLflow 2.12 or later), one key per prompt."""
    for tag, image in zip(image_tags(shown.prompts), shown.images):
        logger.experiment.log_image(logger.run_id, image, key=mlflow_key(tag), step=shown.step)


def to_comet(logger: CometLogger, shown: ValidationImages) -> None:
    """One named image per prompt, at the validation's step."""
    for tag, image in zip(image_tags(shown.prompts), shown.images):
        logger.experiment.log_image(image, name=tag, step=shown.step)


# Lightning's logger classes import their packages only when built, so naming them here requires none of them.
SENDERS: dict[type[Logger], Callable[[Logger, ValidationImages], None]] = {
    TensorBoardLogger: to_tensorboard, WandbLogger: to_wandb, MLFlowLogger: to_mlflow, CometLogger: to_comet,
}


def send_images(logger: Logger, shown: ValidationImages) -> bool:
    """`shown` through `logger`'s image API; False when it has none."""
    for logger_class, send in SENDERS.items():
        if isinstance(logger, logger_class):
            send(logger, shown)
            return True
    return False


class ValidationImageLogger(L.Callback):
    """Sends the images of each validation (made by the module on process 0, `validation_images`) to every logger;
    a logger with no image API is named once in a warning."""

    def __init__(self, enabled: bool = True):
        """
        Args:
            enabled: Send the validation images to the loggers (off: only the PNG grids in
                <default_root_dir>/validation hold them).
        """
        self.enabled = enabled
        self._warned: set[int] = set()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the module's on_validation_epoch_end, which Lightning calls after the callbacks' one.
        shown: ValidationImages | None = getattr(pl_module, "validation_images", None)
        if not self.enabled or shown is None or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            try:
                sent = send_images(logger, shown)
            except Exception as error:  # noqa: BLE001 (a logger's service refusing images must not end a long run)
                log.warning("validation images: %s refused them (%s: %s); they are in the PNG grid %s",
                            type(logger).__name__, type(error).__name__, error, shown.grid)
                continue
            if not sent and id(logger) not in self._warned:
                self._warned.add(id(logger))
                log.warning("validation images: %s has no image API this package knows; they are in the PNG grids "
                            "%s/step=NNNNNN.png (prompts.txt gives their order)",
                            type(logger).__name__, shown.grid.parent)

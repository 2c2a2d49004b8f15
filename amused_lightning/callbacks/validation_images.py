"""The validation images: drawn after each validation from the module's validation prompts (with the EMA weights when
the run keeps them), saved as a grid in the run folder, scored by the module's image metrics, and sent with their
scores to every logger, each through its own image API."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CometLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from PIL import Image

from amused_lightning.model.decoding import to_pil
from amused_lightning.run.folder import RunFolder, ValidationGrid
from amused_lightning.toy.image_metrics import evaluate_image_metrics

log = logging.getLogger(__name__)

KEY = "val_images"
MLFLOW_KEY_LENGTH = 200  # MLflow puts the key in a file name, which most file systems cap at 255 bytes


def image_grid(images: list[Image.Image], columns: int = 4) -> Image.Image:
    """Images tiled left to right, top to bottom."""
    width, height = images[0].size
    columns = min(columns, len(images))
    grid = Image.new("RGB", (columns * width, math.ceil(len(images) / columns) * height))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


def image_tags(prompts: list[str]) -> list[str]:
    """`val_images/NN <prompt>`: the reading order and the prompt in each image's name."""
    return [f"{KEY}/{i:02d} {prompt}" for i, prompt in enumerate(prompts)]


def mlflow_key(tag: str) -> str:
    """An MLflow image key for a tag: ASCII letters, digits and `_-. /` only (MLflow refuses others), and short
    enough for a file name."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", tag)[:MLFLOW_KEY_LENGTH]


def to_tensorboard(logger: TensorBoardLogger, grid: ValidationGrid, images: list[Image.Image]) -> None:
    """One image per tag, at the validation's step."""
    for tag, image in zip(image_tags(grid.prompts), images):
        logger.experiment.add_image(tag, np.asarray(image), grid.step, dataformats="HWC")


def to_wandb(logger: WandbLogger, grid: ValidationGrid, images: list[Image.Image]) -> None:
    """All images under one key, each captioned with its prompt."""
    logger.log_image(KEY, list(images), step=grid.step, caption=list(grid.prompts))


def to_mlflow(logger: MLFlowLogger, grid: ValidationGrid, images: list[Image.Image]) -> None:
    """MLflow's images with a step (MLflow 2.12 or later), one key per prompt."""
    for tag, image in zip(image_tags(grid.prompts), images):
        logger.experiment.log_image(logger.run_id, image, key=mlflow_key(tag), step=grid.step)


def to_comet(logger: CometLogger, grid: ValidationGrid, images: list[Image.Image]) -> None:
    """One named image per prompt, at the validation's step."""
    for tag, image in zip(image_tags(grid.prompts), images):
        logger.experiment.log_image(image, name=tag, step=grid.step)


# Lightning's logger classes import their packages only when built, so naming them here requires none of them.
SENDERS: dict[type[Logger], Callable[[Logger, ValidationGrid, list[Image.Image]], None]] = {
    TensorBoardLogger: to_tensorboard, WandbLogger: to_wandb, MLFlowLogger: to_mlflow, CometLogger: to_comet,
}


def send_images(logger: Logger, grid: ValidationGrid, images: list[Image.Image]) -> bool:
    """The images through `logger`'s image API; False when it has none."""
    for logger_class, send in SENDERS.items():
        if isinstance(logger, logger_class):
            send(logger, grid, images)
            return True
    return False


def validation_pixels(pl_module: L.LightningModule) -> torch.Tensor:
    """(B, 3, H, W) pixels of the module's validation prompts, drawn with its sampling settings and seed (from its
    start images, if any), `memory.decode_chunk_size` images per VQ decoder call: those of `generate` to fp32
    rounding."""
    settings, model = pl_module.validation, pl_module.model
    return model.generate_pixels(settings.prompts, settings.generation, model.spec.seed, start=settings.start_images(),
                                 decode_chunk_size=pl_module.memory.decode_chunk_size)


class ValidationImages(L.Callback):
    """Draws, saves, scores and logs the images of each validation's prompts (on process 0); a logger with no image
    API is named once in a warning."""

    def __init__(self, enabled: bool = True):
        """
        Args:
            enabled: Send the validation images to the loggers (off: only the PNG grids in
                <default_root_dir>/validation hold them).
        """
        self.enabled = enabled
        self.scores: dict[str, float] = {}  # the image metrics of the latest validation
        self._warned: set[int] = set()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Before the module's own epoch-end hook, and before EMA's on_validation_end puts the trained weights back.
        prompts = pl_module.validation.prompts
        if not prompts or not trainer.is_global_zero or trainer.sanity_checking:
            return
        with trainer.precision_plugin.forward_context():
            images = to_pil(validation_pixels(pl_module))
        # weights_step: a `validate` of a checkpoint labels its images with the checkpoint's step, not 0.
        grid = RunFolder(trainer.default_root_dir).save_validation(pl_module.weights_step, prompts, image_grid(images))
        self.scores = scores = evaluate_image_metrics(pl_module.image_metrics, prompts, images)
        for logger in trainer.loggers if scores else []:
            logger.log_metrics(scores, step=grid.step)
        if scores:  # for the progress line and other callbacks
            pl_module.log_dict(scores, logger=False, rank_zero_only=True)
        if self.enabled:
            self.send(trainer, grid, images)

    def send(self, trainer: L.Trainer, grid: ValidationGrid, images: list[Image.Image]) -> None:
        """The images to every logger that takes images; a logger's refusal is a warning, not the end of the run."""
        for logger in trainer.loggers:
            try:
                sent = send_images(logger, grid, images)
            except Exception as error:  # noqa: BLE001 (a logger's service refusing images must not end a long run)
                log.warning("validation images: %s refused them (%s: %s); they are in the PNG grid %s",
                            type(logger).__name__, type(error).__name__, error, grid.path)
                continue
            if not sent and id(logger) not in self._warned:
                self._warned.add(id(logger))
                log.warning("validation images: %s has no image API this package knows; they are in the PNG grids "
                            "%s/step=NNNNNN.png (prompts.txt gives their order)",
                            type(logger).__name__, grid.path.parent)

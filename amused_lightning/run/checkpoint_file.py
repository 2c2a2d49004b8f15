"""Checkpoints written straight to disk. Lightning's default writer serialises the whole checkpoint into memory and
then copies those bytes once more before writing them: for a full finetune of amused-256 (603 M weights and AdamW's
two moments, 7.2 GB) that is 14 GB of host memory at every save and minutes of paging on a small machine. Here a
local checkpoint streams into a temporary file beside its target, which replaces the target only once complete."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


def save_atomically(checkpoint: dict[str, Any], path: Path) -> None:
    """torch.save `checkpoint` to `path` through a temporary file in its folder: a save that fails or is killed
    leaves the previous file whole and no partial one under the target's name. One process writes a run's checkpoints
    (the run folder's lock), so the temporary name is fixed: a save killed outright leaves it for the next to
    overwrite, not a new one each time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        # os.open with 0o666 (not tempfile's 0o600): the checkpoint gets the mode the user's umask gives new files.
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), "wb") as file:
            torch.save(checkpoint, file)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


class StreamingCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that streams local checkpoints to disk (`save_atomically`); remote paths (s3://, gs://, ...)
    go through Lightning's own writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        protocol = get_filesystem(path).protocol  # "file", or ("file", "local") in newer fsspec
        if storage_options is not None or "file" not in (protocol if isinstance(protocol, tuple) else (protocol,)):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        save_atomically(checkpoint, Path(path))


def stream_checkpoints(trainer: L.Trainer) -> None:
    """Use StreamingCheckpointIO where the trainer would use Lightning's default writer; a writer the user chose (an
    AsyncCheckpointIO, a strategy's own) stays."""
    strategy = trainer.strategy
    if type(getattr(strategy, "checkpoint_io", None)) is TorchCheckpointIO:
        strategy.checkpoint_io = StreamingCheckpointIO()

"""Checkpoints written straight to disk. Lightning's default writer serialises the whole checkpoint into memory and
then copies those bytes once more before writing them: for a full finetune of amused-256 (603 M weights and AdamW's
two moments, 7.2 GB) that is 14 GB of host memory at every save and minutes of paging on a small machine. Here a
local checkpoint streams into a temporary file beside its target, which replaces the target only once complete and on
disk. What is written goes to disk as it is written and leaves the page cache: a checkpoint is read back rarely, and
7 GB of fresh cache pages cost a small machine more than the disk does (`write_behind`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fsspec
import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from amused_lightning.write_behind import WriteBehindFile, sync_folder

PARTIAL_NAME = ".checkpoint.partial"
"""The file a checkpoint is written to before it takes its name. One process writes a run's checkpoints, one at a
time (the run folder's lock), so one name per folder: a save killed outright leaves it for the next save to replace,
whichever checkpoint that is, not a new one each time."""


def save_atomically(checkpoint: dict[str, Any], path: Path) -> None:
    """torch.save `checkpoint` to `path` through PARTIAL_NAME in its folder, on disk before it takes the name: a
    save that fails, or whose process or machine stops, leaves the previous file whole and nothing under the target's
    name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / PARTIAL_NAME
    partial.unlink(missing_ok=True)  # a new file takes the mode the umask gives, as `open` creates it
    try:
        with WriteBehindFile(partial) as file:
            torch.save(checkpoint, file)
            file.sync()
        os.replace(partial, path)
        sync_folder(path.parent)
    finally:
        partial.unlink(missing_ok=True)


class StreamingCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that streams local checkpoints to disk (`save_atomically`); remote paths (s3://, gs://, ...)
    go through Lightning's own writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        filesystem, local_path = fsspec.core.url_to_fs(str(path))  # "file:///x" -> "/x"
        protocol = filesystem.protocol  # "file", or ("file", "local") in newer fsspec
        if storage_options is not None or "file" not in (protocol if isinstance(protocol, tuple) else (protocol,)):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        save_atomically(checkpoint, Path(local_path))


def stream_checkpoints(trainer: L.Trainer) -> None:
    """Use StreamingCheckpointIO where the trainer would use Lightning's default writer; a writer the user chose (an
    AsyncCheckpointIO, a strategy's own) stays."""
    strategy = trainer.strategy
    if type(getattr(strategy, "checkpoint_io", None)) is TorchCheckpointIO:
        strategy.checkpoint_io = StreamingCheckpointIO()

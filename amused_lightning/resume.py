"""A resumed fit continues its run: the same TensorBoard version, and nothing redone for steps already done."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from amused_lightning.errors import MissingPathError

LOGS = "lightning_logs"
# ckpt_path values Lightning resolves itself rather than reading a file.
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def latest_version(root: str | Path) -> int | None:
    """The highest `version_N` under <root>/lightning_logs, if any."""
    folder = Path(root) / LOGS
    versions = [int(m.group(1)) for p in folder.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(versions) if versions else None


def run_logger(root: str | Path, resuming: bool) -> TensorBoardLogger:
    """TensorBoard in <root>/lightning_logs: a resumed fit writes into the newest version, a fresh one a new one."""
    latest = latest_version(root)
    version = latest if resuming and latest is not None else None
    return TensorBoardLogger(save_dir=str(root), name=LOGS, version=version)


def check_ckpt_path(ckpt_path: str | None) -> None:
    """A checkpoint file named in --ckpt_path must exist (Lightning's own words for it come with a traceback)."""
    if ckpt_path is not None and ckpt_path not in SPECIAL_CKPT_PATHS and not Path(ckpt_path).is_file():
        raise MissingPathError(f"ckpt_path={ckpt_path!r}: no such checkpoint file (to continue a run, pass "
                               "--ckpt_path last with the run's trainer.default_root_dir)")


class StartStep(L.Callback):
    """Remembers the optimizer step a fit started from (after any checkpoint was restored)."""

    def __init__(self) -> None:
        self.step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.step = trainer.global_step

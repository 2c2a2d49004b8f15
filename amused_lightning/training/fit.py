"""The whole of a fit, as `python -m amused_lightning fit` runs it and as a Python user calls it in place of
`Trainer.fit`: the checks and the resume point, training, the final validation and the export."""

from __future__ import annotations

import logging

import lightning as L

from amused_lightning.callbacks.final_export import FinalExport
from amused_lightning.errors import ExistingOutputError
from amused_lightning.run.checkpoint import RunCheckpoint
from amused_lightning.run.checkpoint_file import stream_checkpoints
from amused_lightning.run.folder import RunFolder
from amused_lightning.training.record import fit_checkpoint
from amused_lightning.training.resume import check_ckpt_path, check_resume_settings, resolve_last

log = logging.getLogger(__name__)


def fit(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule,
        ckpt_path: str | None = None) -> None:
    """Train `module` on `datamodule` (resuming from `ckpt_path`, `last` included), validate the final weights, and
    export them when the trainer has a FinalExport callback."""
    check_ckpt_path(ckpt_path)
    export = next((c for c in trainer.callbacks if isinstance(c, FinalExport)), None)
    if export is not None:
        export.check_push_first()  # before a long data scan or cache build, not after
    resumed = ckpt_path is not None
    ckpt_path = resume_point(ckpt_path, RunFolder(trainer.default_root_dir), module)
    datamodule.connect(module.model.frozen_encoders())
    stream_checkpoints(trainer)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if needs_final_validation(trainer, module, resumed):
        trainer.validate(module, datamodule=datamodule, verbose=False)
    if export is not None:  # after the final validation: the card shows the images of the exported step
        export.export_at_end(trainer, fit_checkpoint(trainer, module))


def resume_point(ckpt_path: str | None, folder: RunFolder, module: L.LightningModule) -> str | None:
    """The checkpoint file the fit resumes from (`last` resolved), its settings checked against the module's; a
    fresh fit refuses a run folder that holds checkpoints."""
    existing = sorted(folder.checkpoints.glob("*.ckpt")) if folder.checkpoints.is_dir() else []
    if existing and ckpt_path is None:
        raise ExistingOutputError(
            f"checkpoint folder {str(folder.checkpoints)!r} already holds {len(existing)} checkpoints "
            f"({existing[-1].name}, ...): resume with --ckpt_path last, or set another "
            "trainer.default_root_dir. Nothing was overwritten."
        )
    ckpt_path = resolve_last(ckpt_path, folder)
    if ckpt_path is not None:
        for line in check_resume_settings(RunCheckpoint.read(ckpt_path).hparams, module.hparams, ckpt_path):
            log.info(line)
    return ckpt_path


def needs_final_validation(trainer: L.Trainer, module: L.LightningModule, resumed: bool) -> bool:
    """Whether the final weights still need a validation: not when the last step was just validated, or when this
    fit resumed a finished run and trained no step (the fit that reached that step validated it)."""
    step = trainer.global_step
    trained_none = module.started_at_step in (None, step)  # None: the fit loop had nothing left to run
    return bool(trainer.limit_val_batches) and module.last_validated_step != step and not (resumed and trained_none)

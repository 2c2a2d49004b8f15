"""At the end of `fit`, the final weights exported to <default_root_dir>/export with a model card, and pushed to the Hub
if asked; what could stop that is checked before training starts."""

from __future__ import annotations

import logging

import lightning as L

from amused_lightning.errors import SettingError
from amused_lightning.export.hub import HubError, check_push, check_repo_id, push_export
from amused_lightning.export.pipeline import export_files, export_run
from amused_lightning.formats import WEIGHT_CHOICES
from amused_lightning.run.checkpoint import RunCheckpoint
from amused_lightning.run.folder import RunFolder
from amused_lightning.run.lock import is_first_process

log = logging.getLogger(__name__)


def release_optimizer_state(trainer: L.Trainer) -> None:
    """Free the optimizer's state and the last gradients of a fit that is over (its checkpoint holds what a resume
    needs): the export reloads the base model beside the trained one, and a full finetune's AdamW moments and
    gradients (7.2 GB for amused-256) need not sit under it."""
    for optimizer in trainer.optimizers:
        optimizer.zero_grad(set_to_none=True)
        getattr(optimizer, "release_state", optimizer.state.clear)()  # OffloadedAdamW keeps its state on the host


class FinalExport(L.Callback):
    """Exports the final weights of a fit (`export_at_end`, called after its final validation); an export already in
    the run folder is kept unless `overwrite`."""

    def __init__(self, enabled: bool = True, weights: str = "auto", merge_lora: bool = False,
                 overwrite: bool = False, push_to_hub: str | None = None, hub_private: bool = True,
                 with_base: bool = False):
        """
        Args:
            enabled: Write the export when fit ends.
            weights: "ema", "trained", or "auto" (ema when the run keeps one).
            merge_lora: Fold LoRA adapters into the exported pipeline weights (LoRA runs only).
            overwrite: Replace an export already in <default_root_dir>/export (by default it is kept).
            push_to_hub: Hub repo id (`owner/name`) to upload the export to, in one commit; the token comes from
                HF_TOKEN or the cached login, checked before training starts.
            hub_private: Create the repo private (an existing repo keeps its visibility).
            with_base: Unmerged LoRA on a Hub or local base: copy the whole base pipeline beside the LoRA file (by
                default the export holds the LoRA file and base_model.json naming the base).
        """
        if weights not in WEIGHT_CHOICES:
            raise SettingError(f"export.weights={weights!r} must be one of {list(WEIGHT_CHOICES)}")
        if push_to_hub is not None and not enabled:
            raise SettingError(f"export.push_to_hub={push_to_hub!r} is set but export.enabled is false: "
                               "nothing would be pushed")
        if push_to_hub is not None:
            check_repo_id(push_to_hub, "export.push_to_hub")
        self.enabled, self.weights, self.merge_lora, self.overwrite = enabled, weights, merge_lora, overwrite
        self.push_to_hub, self.hub_private, self.with_base = push_to_hub, hub_private, with_base
        self._token: str | None = None

    def _kept(self, trainer: L.Trainer) -> bool:
        """Whether an earlier export is in the way and stays (said once at the start and again at the end)."""
        folder = RunFolder(trainer.default_root_dir).export
        if self.overwrite or not export_files(folder):
            return False
        pushed = " and not pushed" if self.push_to_hub else ""
        log.warning("%s already holds an export: it is kept%s (set export.overwrite true to replace it, or write this "
                    "run's last checkpoint elsewhere with `python -m amused_lightning export`)", folder, pushed)
        return True

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if self.enabled:
            pl_module.model.spec.finetuning.check_export(self.merge_lora, "export.merge_lora")
            if trainer.is_global_zero:
                self._kept(trainer)
            self._check_push(trainer)

    def check_push_first(self) -> None:
        """Before the data is read (the fit calls it before training): the first process asks the Hub once."""
        if self.enabled and self.push_to_hub is not None and is_first_process():
            self._token = check_push(self.push_to_hub, None, "export.push_to_hub")

    def _check_push(self, trainer: L.Trainer) -> None:
        """Before any step: process 0 asks the Hub (unless it did before the fit), and every process stops with its
        answer if a push cannot work."""
        if self.push_to_hub is None:
            return
        problem = None
        if trainer.is_global_zero and self._token is None:
            try:
                self._token = check_push(self.push_to_hub, None, "export.push_to_hub")
            except HubError as error:
                problem = str(error)
        problem = trainer.strategy.broadcast(problem)
        if problem is not None:
            raise HubError(problem)

    def export_at_end(self, trainer: L.Trainer, run: RunCheckpoint) -> None:
        """Export (and push) the fit's final weights: the base reloaded in full precision with the trained weights
        on top, as `export` of the checkpoint of that step would write them."""
        if not (self.enabled and trainer.is_global_zero) or self._kept(trainer):
            return
        folder = RunFolder(trainer.default_root_dir)
        release_optimizer_state(trainer)
        log.info("exporting step %s to %s...", run.step, folder.export)  # loading and writing take a while
        written, weights = export_run(run, folder.export, self.weights, self.merge_lora, True,
                                      self.push_to_hub or str(folder.export), folder.newest_validation(run.step),
                                      self.with_base)
        files = [path.name for path in written if path != folder.export]
        log.info("exported %s weights to %s (the pipeline, %s)", weights, folder.export, ", ".join(files))
        # After the export is complete: a failed push leaves it whole, and says how to upload it by hand.
        if self.push_to_hub is not None:
            url = push_export(folder.export, export_files(folder.export), self.push_to_hub, self.hub_private,
                              self._token)
            log.info("pushed %s to %s", folder.export, url)

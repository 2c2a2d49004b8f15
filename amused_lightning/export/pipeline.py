"""A run's weights written as an export: the diffusers pipeline folder (with the LoRA file of unmerged adapters) and the
model card, into a folder that may hold nothing else of an earlier export."""

from __future__ import annotations

import shutil
from pathlib import Path

from amused_lightning.errors import ExistingOutputError
from amused_lightning.export.card import CARD_NAME, SAMPLES_NAME, CardFacts, write_card
from amused_lightning.formats import LORA_WEIGHT_NAME
from amused_lightning.model.amused import AmusedModel
from amused_lightning.model.components import SUBFOLDERS
from amused_lightning.run.checkpoint import RunCheckpoint
from amused_lightning.run.folder import ValidationGrid

EXPORT_MARKERS = (LORA_WEIGHT_NAME, "model_index.json", CARD_NAME, SAMPLES_NAME, *SUBFOLDERS)


def export_files(folder: Path) -> list[str]:
    """The names of an export's files and folders present in `folder`."""
    return [name for name in EXPORT_MARKERS if (folder / name).exists()]


def prepare_output(folder: Path, overwrite: bool) -> None:
    """Create `folder`; refuse one that holds an export unless `overwrite`, then remove only export files."""
    present = export_files(folder)
    if present and not overwrite:
        raise ExistingOutputError(f"{str(folder)!r} already holds an export ({', '.join(present)}): "
                                  "pass --overwrite to replace it, or choose another folder")
    for name in present:
        target = folder / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def export_run(run: RunCheckpoint, folder: Path, weights: str | None = None, merge_lora: bool = False,
               overwrite: bool = False, where: str | None = None,
               samples: ValidationGrid | None = None) -> tuple[list[Path], str]:
    """Write the run's chosen weights (EMA by default when kept) into `folder`: the pipeline, the LoRA file of
    unmerged adapters, the model card (naming the export `where` it will be loaded from) and `samples` as
    samples.png. Returns the paths written and which weights they hold."""
    # The base reloaded in full precision with the trained weights on top, whatever the fit held in memory.
    model = AmusedModel.from_checkpoint(run, weights)
    prepare_output(folder, overwrite)
    written = model.save_pretrained(folder, merge_lora)
    written += write_card(CardFacts.of(run, model.weights, merge_lora, where or str(folder), samples), folder)
    return written, model.weights

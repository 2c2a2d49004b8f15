"""A run's weights written as an export: the diffusers pipeline folder (with the LoRA file of unmerged adapters) and the
model card, into a folder that may hold nothing else of an earlier export."""

from __future__ import annotations

import shutil
from pathlib import Path

from amused_lightning.errors import ExistingOutputError
from amused_lightning.export.base_reference import nameable_base, write_base_reference
from amused_lightning.export.card import CARD_NAME, SAMPLES_NAME, CardFacts, write_card
from amused_lightning.formats import BASE_NAME, LORA_WEIGHT_NAME, SAMPLING_NAME
from amused_lightning.model.amused import AmusedModel
from amused_lightning.model.components import SUBFOLDERS
from amused_lightning.model.sampling import ValidationSampling
from amused_lightning.permissions import honour_umask
from amused_lightning.run.checkpoint import RunCheckpoint
from amused_lightning.run.folder import ValidationGrid

EXPORT_MARKERS = (LORA_WEIGHT_NAME, "model_index.json", CARD_NAME, SAMPLES_NAME, SAMPLING_NAME, BASE_NAME,
                  *SUBFOLDERS)


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
               overwrite: bool = False, where: str | None = None, samples: ValidationGrid | None = None,
               with_base: bool = False) -> tuple[list[Path], str]:
    """Write the run's chosen weights (EMA by default when kept) into `folder`: the pipeline (for unmerged adapters
    on a base diffusers loads by name, only the LoRA file and base_model.json naming the base, unless `with_base`),
    the validation's sampling settings, the model card (naming the export `where` it will be loaded from) and
    `samples` as samples.png. Returns the paths written and which weights they hold."""
    # The base reloaded in full precision with the trained weights on top, whatever the fit held in memory.
    model = AmusedModel.from_checkpoint(run, weights)
    prepare_output(folder, overwrite)
    finetuning = model.spec.finetuning
    base_left_out = finetuning.adapters and not (merge_lora or with_base) and nameable_base(model.spec)
    if base_left_out:
        written = [finetuning.save_adapters(model.parts, folder / LORA_WEIGHT_NAME),
                   write_base_reference(model.spec, folder)]
    else:
        written = model.save_pretrained(folder, merge_lora)
    sampling = ValidationSampling.of_hparams(run.hparams, model.resolution)
    written.append(sampling.write(folder))
    facts = CardFacts.of(run, model.weights, merge_lora, where or str(folder), samples, sampling, not base_left_out)
    written += write_card(facts, folder)
    honour_umask(*(folder / name for name in export_files(folder)))
    return written, model.weights

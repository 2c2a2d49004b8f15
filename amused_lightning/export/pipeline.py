"""Turn a run checkpoint into diffusers files: a LoRA safetensors file and/or a complete AmusedPipeline folder."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import diffusers
import lightning as L
import torch
from diffusers import UVit2DModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPTextModelWithProjection

from amused_lightning.callbacks.ema import EMA, find_ema
from amused_lightning.errors import ExistingOutputError, SettingError
from amused_lightning.export.card import CARD_NAME, SAMPLES_NAME, CardFacts, card_facts, run_record, write_card
from amused_lightning.export.hub import HubError, check_push, check_repo_id, push_export
from amused_lightning.formats import LORA_WEIGHT_NAME, WEIGHT_CHOICES
from amused_lightning.model.adapters import has_lora, lora_metadata, lora_state_dict
from amused_lightning.model.amused import CHECKPOINT_MARK, ModelSpec, TrainedPipeline
from amused_lightning.model.components import SUBFOLDERS, Components
from amused_lightning.quiet import without_transformers_bars
from amused_lightning.run.lock import is_first_process
from amused_lightning.training.optim import class_path

log = logging.getLogger(__name__)

MODEL_INDEX = {
    "_class_name": "AmusedPipeline",
    "scheduler": ["diffusers", "AmusedScheduler"],
    "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "transformer": ["diffusers", "UVit2DModel"],
    "vqvae": ["diffusers", "VQModel"],
}
EXPORT_MARKERS = (LORA_WEIGHT_NAME, "model_index.json", CARD_NAME, SAMPLES_NAME, *SUBFOLDERS)


def write_lora_file(parts: Components, folder: Path) -> Path:
    """Adapters under `transformer.`/`text_encoder.` with their LoraConfig in the metadata (alpha included)."""
    tensors, metadata = {}, {}
    for prefix, model in (("transformer", parts.transformer), ("text_encoder", parts.text_encoder)):
        if has_lora(model):
            tensors.update({f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in lora_state_dict(model).items()})
            metadata.update({f"{prefix}.{k}": v for k, v in lora_metadata(model).items()})
    path = folder / LORA_WEIGHT_NAME
    save_file(tensors, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(metadata)})
    return path


def plain_state_dict(model: nn.Module, merge_lora: bool) -> dict[str, torch.Tensor]:
    """Weights without adapter modules: base weights, with the LoRA update folded in when `merge_lora`."""
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if merge_lora:
        for layer in layers:
            layer.merge()
    try:
        return {key.replace(".base_layer.", "."): value.detach().cpu().clone()
                for key, value in model.state_dict().items() if "lora_" not in key}
    finally:
        for layer in layers if merge_lora else ():
            layer.unmerge()


def clean_copy(cls, model: nn.Module, merge_lora: bool) -> nn.Module:
    """A fresh `cls` from `model`'s config with its (optionally merged) weights: no adapters, no wrappers."""
    fresh = cls.from_config(model.config) if cls is UVit2DModel else cls(model.config)
    fresh.load_state_dict(plain_state_dict(model, merge_lora))
    return fresh


def write_pipeline(parts: Components, folder: Path, merge_lora: bool) -> Path:
    """A folder `AmusedPipeline.from_pretrained` loads; unmerged adapters go beside it as the LoRA file."""
    with without_transformers_bars():
        clean_copy(UVit2DModel, parts.transformer, merge_lora).save_pretrained(folder / "transformer")
        clean_copy(CLIPTextModelWithProjection, parts.text_encoder, merge_lora).save_pretrained(folder / "text_encoder")
    parts.vqvae.save_pretrained(folder / "vqvae")
    parts.tokenizer.save_pretrained(folder / "tokenizer")
    parts.scheduler.save_pretrained(folder / "scheduler")
    index = {**MODEL_INDEX, "_diffusers_version": diffusers.__version__}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def export_files(folder: Path) -> list[str]:
    """The names of an export's files and folders present in `folder`."""
    return [name for name in EXPORT_MARKERS if (folder / name).exists()]


def check_merge_lora(spec: ModelSpec, merge_lora: bool, setting: str) -> None:
    """Merging adapters means something only for a run that trained LoRA adapters; unmerged, they must be adapters
    diffusers loads as trained."""
    if merge_lora and spec.lora is None and spec.text_encoder.lora is None:
        raise SettingError(f"{setting} is set but this run trained no LoRA adapter (a full finetune): "
                           "its weights are exported as they are; drop the option")
    # transformers' adapter loading (which diffusers' text-encoder LoRA loading goes through) drops DoRA's
    # magnitude vectors: the adapter would load silently wrong. The transformer's DoRA loads exactly.
    text_lora = spec.text_encoder.lora
    if not merge_lora and text_lora is not None and text_lora.use_dora:
        raise SettingError(f"model.text_encoder.lora.use_dora is set and {setting} is not: diffusers cannot load a "
                           "text-encoder DoRA adapter from a LoRA file (it drops the magnitude vectors); export with "
                           "--merge-lora (export.merge_lora: true), which folds it into the pipeline weights")


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


def export_pipeline(pipeline: TrainedPipeline, folder: Path, merge_lora: bool = False, overwrite: bool = False,
                    card: CardFacts | None = None, run_folder: Path | None = None) -> list[Path]:
    """The pipeline folder, plus, for unmerged adapters, the LoRA file; with `card`, the model card and the run's
    newest validation grid."""
    prepare_output(folder, overwrite)
    written = []
    # A merged pipeline already holds the adapters: a LoRA file beside it would be applied twice.
    if not merge_lora and pipeline.has_lora:
        written.append(write_lora_file(pipeline.parts, folder))
    written.append(write_pipeline(pipeline.parts, folder, merge_lora))
    if card is not None:
        written += write_card(card, run_folder, folder)
    return written


def run_folder_of(checkpoint_path: Path) -> Path:
    """The run folder a checkpoint lies in: checkpoints/ below it, or the folder itself (SLURM's hpc_ckpt files)."""
    folder = checkpoint_path.resolve().parent
    return folder.parent if folder.name == "checkpoints" else folder


def push_written_export(folder: Path, repo_id: str, private: bool, token: str) -> str:
    """Push the export files in `folder`; returns the repo's address."""
    return push_export(folder, export_files(folder), repo_id, private, token)


class FinalExport(L.Callback):
    """At the end of `fit`, export the final weights to <default_root_dir>/export with a model card, and push them to
    the Hub if asked; an export already there is kept unless `overwrite`."""

    def __init__(self, enabled: bool = True, weights: str = "auto", merge_lora: bool = False,
                 overwrite: bool = False, push_to_hub: str | None = None, hub_private: bool = True):
        """
        Args:
            enabled: Write the export when fit ends.
            weights: "ema", "trained", or "auto" (ema when the run keeps one).
            merge_lora: Fold LoRA adapters into the exported pipeline weights (LoRA runs only).
            overwrite: Replace an export already in <default_root_dir>/export (by default it is kept).
            push_to_hub: Hub repo id (`owner/name`) to upload the export to, in one commit; the token comes from
                HF_TOKEN or the cached login, checked before training starts.
            hub_private: Create the repo private (an existing repo keeps its visibility).
        """
        if weights not in WEIGHT_CHOICES:
            raise SettingError(f"export.weights={weights!r} must be one of {list(WEIGHT_CHOICES)}")
        if push_to_hub is not None and not enabled:
            raise SettingError(f"export.push_to_hub={push_to_hub!r} is set but export.enabled is false: "
                               "nothing would be pushed")
        if push_to_hub is not None:
            check_repo_id(push_to_hub, "export.push_to_hub")
        self.enabled, self.weights, self.merge_lora, self.overwrite = enabled, weights, merge_lora, overwrite
        self.push_to_hub, self.hub_private = push_to_hub, hub_private
        self._token: str | None = None

    def _kept(self, trainer: L.Trainer) -> bool:
        """Whether an earlier export is in the way and stays (said once at the start and again at the end)."""
        folder = Path(trainer.default_root_dir) / "export"
        if self.overwrite or not export_files(folder):
            return False
        pushed = " and not pushed" if self.push_to_hub else ""
        log.warning("%s already holds an export: it is kept%s (set export.overwrite true to replace it, or write this "
                    "run's last checkpoint elsewhere with `python -m amused_lightning export`)", folder, pushed)
        return True

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if self.enabled:
            check_merge_lora(pl_module.spec, self.merge_lora, "export.merge_lora")
            if trainer.is_global_zero:
                self._kept(trainer)
            self._check_push(trainer)

    def check_push_first(self) -> None:
        """Before the data is read (the CLI calls it before fit): the first process asks the Hub once."""
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

    def export_at_end(self, trainer: L.Trainer, pl_module) -> None:
        """Export (and push) the final weights; the CLI calls it after the fit's final validation, so the card
        shows the images of the exported step."""
        if not (self.enabled and trainer.is_global_zero) or self._kept(trainer):
            return
        # The same path as `export` of a checkpoint: the base reloaded in full precision, the trained weights on top.
        checkpoint = final_checkpoint(trainer, pl_module)
        pipeline = TrainedPipeline.from_checkpoint(checkpoint, self.weights)
        root = Path(trainer.default_root_dir)
        card = card_facts(checkpoint, pipeline.weights, self.merge_lora, self.push_to_hub or str(root / "export"))
        written = export_pipeline(pipeline, root / "export", self.merge_lora, True, card, root)
        files = [path.name for path in written if path != root / "export"]
        log.info("exported %s weights to %s (the pipeline, %s)", pipeline.weights, root / "export", ", ".join(files))
        # After the export is complete: a failed push leaves it whole, and says how to upload it by hand.
        if self.push_to_hub is not None:
            url = push_written_export(root / "export", self.push_to_hub, self.hub_private, self._token)
            log.info("pushed %s to %s", root / "export", url)


def final_checkpoint(trainer: L.Trainer, pl_module) -> dict:
    """What a checkpoint of the fit's last step would hold for an export: settings, trained and EMA weights, run."""
    ema = find_ema(trainer)
    datamodule = getattr(trainer, "datamodule", None)
    optimizer = class_path(trainer.optimizers[0]) if trainer.optimizers else None
    return {"hyper_parameters": dict(pl_module.hparams), "state_dict": pl_module.trained_state(),
            "callbacks": {EMA.STATE_KEY: ema.state_dict()} if ema is not None else {},
            "global_step": trainer.global_step,
            "datamodule_hyper_parameters": dict(datamodule.hparams) if datamodule is not None else {},
            CHECKPOINT_MARK: {"optimizer": optimizer, "run": run_record(trainer)}}

"""A resumed fit continues its run: the same TensorBoard version, nothing redone for steps already done, the
checkpoint it resumes from said, and settings that would change what the trained weights mean refused."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from amused_lightning.errors import MissingPathError, SettingError
from amused_lightning.model.adapters import LoraSettings
from amused_lightning.model.amused import ModelSpec
from amused_lightning.model.components import resolve_embedded
from amused_lightning.model.presets import PRESETS

log = logging.getLogger(__name__)

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


def step_in_name(path: Path) -> int:
    """The N of a `step=N` checkpoint name (-1 for other names)."""
    match = re.search(r"step=(\d+)", path.stem)
    return int(match.group(1)) if match else -1


def resolve_last(ckpt_path: str | None, checkpoints: Path, root: Path) -> str | None:
    """`last` as the file it means: the newest last*.ckpt (or SLURM requeue's hpc_ckpt_*.ckpt), else the newest step
    checkpoint, else None, a fresh start; either of the latter two is said."""
    if ckpt_path != "last":
        return ckpt_path
    lasts = [*checkpoints.glob("last*.ckpt"), *root.glob("hpc_ckpt_*.ckpt")]
    if lasts:
        return str(max(lasts, key=lambda path: path.stat().st_mtime_ns))
    steps = sorted(checkpoints.glob("*.ckpt"), key=lambda path: (step_in_name(path), path.stat().st_mtime_ns))
    if steps:
        log.warning("--ckpt_path last: %s holds no last.ckpt; resuming from the newest step checkpoint, %s",
                    checkpoints, steps[-1].name)
        return str(steps[-1])
    log.info("--ckpt_path last: no checkpoint in %s yet, so training starts at step 0", checkpoints)
    return None


def lora_settings(name: str, lora: LoraSettings | None) -> dict[str, Any]:
    """A LoRA group's rank, alpha, targets and variant (its dropout only regularises training), or `name: off`."""
    if lora is None:
        return {name: "off"}
    return {name: "on", f"{name}.r": lora.r, f"{name}.alpha": float(lora.alpha),
            f"{name}.target_modules": sorted(lora.target_modules), f"{name}.use_dora": lora.use_dora,
            f"{name}.use_rslora": lora.use_rslora}


def weight_settings(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that decide what a run's trained weights mean: base model, finetuning mode, adapters."""
    spec = ModelSpec.from_hparams(hparams)
    settings = {"model.pretrained": spec.pretrained, "model.revision": spec.revision, "model.variant": spec.variant}
    if resolve_embedded(spec.pretrained) in PRESETS:  # a preset's base weights are drawn from the seed
        settings["seed_everything"] = spec.seed
    settings.update(lora_settings("model.lora", spec.lora))
    settings["model.text_encoder.train"] = spec.text_encoder.train
    settings.update(lora_settings("model.text_encoder.lora", spec.text_encoder.lora))
    return settings


# Module hyperparameters that the CLI links from other settings: named as the user sets them.
LINKED = {"model.seed": "seed_everything", "model.batch_size": "data.batch_size"}


def flat_settings(value: Any, name: str = "model") -> dict[str, Any]:
    """Hyperparameters as `model.<group>.<field>` -> value (LightningCLI's own `_` entries left out)."""
    if not isinstance(value, Mapping) or not value:
        return {LINKED.get(name, name): value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if not str(key).startswith("_"):
            flat.update(flat_settings(item, f"{name}.{key}"))
    return flat


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(setting, old, new) for each setting whose value differs, in the order the settings come."""
    return [(key, old.get(key), new.get(key)) for key in {**old, **new} if old.get(key) != new.get(key)]


def check_resume_settings(old: Mapping[str, Any], new: Mapping[str, Any], checkpoint: str) -> list[str]:
    """Refuse a change that alters what the checkpoint's weights mean; the other changes, as lines to log."""
    refused = differences(weight_settings(old), weight_settings(new))
    if refused:
        setting, before, after = refused[0]
        raise SettingError(f"{setting} changed on resume: {before} -> {after} ({checkpoint} was trained with "
                           f"{before}): that changes what its trained weights mean; resume with {setting} {before}, "
                           "or start a new run in another trainer.default_root_dir")
    kept = weight_settings(new).keys()
    return [f"{setting} changed on resume: {before} -> {after} (applied)"
            for setting, before, after in differences(flat_settings(old), flat_settings(new)) if setting not in kept]


class StartStep(L.Callback):
    """Remembers the optimizer step a fit started from (after any checkpoint was restored)."""

    def __init__(self) -> None:
        self.step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.step = trainer.global_step

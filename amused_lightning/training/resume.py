"""A resumed fit continues its run: the same TensorBoard version, nothing redone for steps already done, the
checkpoint it resumes from said, and settings that would change what the trained weights mean refused."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger

from amused_lightning.errors import MissingPathError, SettingError
from amused_lightning.model.spec import ModelSpec
from amused_lightning.run.folder import LOGS, RunFolder

log = logging.getLogger(__name__)

# ckpt_path values Lightning resolves itself rather than reading a file.
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
VALIDATE_VERSION = "validate"  # the TensorBoard run of `validate`


def run_logger(folder: RunFolder, resuming: bool) -> TensorBoardLogger:
    """TensorBoard in the run's logs: a resumed fit writes into the newest version, a fresh one a new one."""
    latest = folder.latest_log_version()
    version = latest if resuming and latest is not None else None
    return TensorBoardLogger(save_dir=str(folder.root), name=LOGS, version=version)


def validate_logger(folder: RunFolder) -> TensorBoardLogger:
    """TensorBoard for `validate`: a run of its own (`lightning_logs/validate`), at the checkpoints' steps, which a
    resumed fit never continues in (it takes the newest `version_N`)."""
    return TensorBoardLogger(save_dir=str(folder.root), name=LOGS, version=VALIDATE_VERSION)


def check_ckpt_path(ckpt_path: str | None) -> None:
    """A checkpoint file named in --ckpt_path must exist (Lightning's own words for it come with a traceback)."""
    if ckpt_path is not None and ckpt_path not in SPECIAL_CKPT_PATHS and not Path(ckpt_path).is_file():
        raise MissingPathError(f"ckpt_path={ckpt_path!r}: no such checkpoint file (to continue a run, pass "
                               "--ckpt_path last with the run's trainer.default_root_dir)")


def step_in_name(path: Path) -> int:
    """The N of a `step=N` checkpoint name (-1 for other names)."""
    match = re.search(r"step=(\d+)", path.stem)
    return int(match.group(1)) if match else -1


def resolve_last(ckpt_path: str | None, folder: RunFolder) -> str | None:
    """`last` as the file it means: the newest last*.ckpt (or SLURM requeue's hpc_ckpt_*.ckpt), else the newest step
    checkpoint, else None, a fresh start; either of the latter two is said."""
    if ckpt_path != "last":
        return ckpt_path
    checkpoints = folder.checkpoints
    lasts = [*checkpoints.glob("last*.ckpt"), *folder.root.glob("hpc_ckpt_*.ckpt")]
    if lasts:
        return str(max(lasts, key=lambda path: path.stat().st_mtime_ns))
    steps = sorted(checkpoints.glob("*.ckpt"), key=lambda path: (step_in_name(path), path.stat().st_mtime_ns))
    if steps:
        log.warning("--ckpt_path last: %s holds no last.ckpt; resuming from the newest step checkpoint, %s",
                    checkpoints, steps[-1].name)
        return str(steps[-1])
    log.info("--ckpt_path last: no checkpoint in %s yet, so training starts at step 0", checkpoints)
    return None


def identity(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """What the trained weights of a module with these hyperparameters mean (see `ModelSpec.identity`)."""
    return ModelSpec.from_hparams(hparams).identity()


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
    refused = differences(identity(old), identity(new))
    if refused:
        setting, before, after = refused[0]
        raise SettingError(f"{setting} changed on resume: {before} -> {after} ({checkpoint} was trained with "
                           f"{before}): that changes what its trained weights mean; resume with {setting} {before}, "
                           "or start a new run in another trainer.default_root_dir")
    kept = identity(new).keys()
    return [f"{setting} changed on resume: {before} -> {after} (applied)"
            for setting, before, after in differences(flat_settings(old), flat_settings(new)) if setting not in kept]

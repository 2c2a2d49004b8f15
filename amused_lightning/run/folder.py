"""The run folder (`trainer.default_root_dir`): where a fit keeps its checkpoints, validation images, logs, export and
lock, named in this one place for the fit that writes them and the commands that read them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

LOGS = "lightning_logs"
LOCK = "run.lock"
PROMPTS = "prompts.txt"


@dataclass(frozen=True)
class ValidationGrid:
    """A validation's images as the run folder holds them: one grid, its optimizer step, the prompts in its reading
    order (left to right, top to bottom)."""

    step: int
    prompts: list[str]
    path: Path


class RunFolder:
    """The paths of one run."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root or ".")

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder:
        """The run a checkpoint lies in: checkpoints/ below it, or the folder itself (SLURM's hpc_ckpt files)."""
        folder = Path(checkpoint).resolve().parent
        return cls(folder.parent if folder.name == "checkpoints" else folder)

    @property
    def checkpoints(self) -> Path:
        """Step checkpoints and last.ckpt: a fixed folder, so `--ckpt_path last` finds them after a restart."""
        return self.root / "checkpoints"

    @property
    def export(self) -> Path:
        """Where the end of a fit writes its export."""
        return self.root / "export"

    @property
    def validation(self) -> Path:
        """The validation images: one grid per validation, and prompts.txt."""
        return self.root / "validation"

    @property
    def logs(self) -> Path:
        """TensorBoard's runs, one version_N per fit that started afresh."""
        return self.root / LOGS

    @property
    def lock(self) -> Path:
        """The lock file a live fit holds."""
        return self.root / LOCK

    def latest_log_version(self) -> int | None:
        """The highest `version_N` under the logs, if any."""
        versions = [int(m.group(1)) for p in self.logs.glob("version_*")
                    if (m := re.fullmatch(r"version_(\d+)", p.name))]
        return max(versions) if versions else None

    def validation_grid(self, step: int) -> Path:
        """The grid of the validation at optimizer step `step`."""
        return self.validation / f"step={step:06d}.png"

    def save_validation(self, step: int, prompts: list[str], grid: Image.Image) -> ValidationGrid:
        """Write the step's grid, with prompts.txt giving its reading order."""
        self.validation.mkdir(parents=True, exist_ok=True)
        (self.validation / PROMPTS).write_text("".join(f"{i}: {prompt}\n" for i, prompt in enumerate(prompts)))
        path = self.validation_grid(step)
        grid.save(path)
        return ValidationGrid(step, list(prompts), path)

    def newest_validation(self, step: int | None = None) -> ValidationGrid | None:
        """The newest validation grid at or before `step` (the weights an export holds), with its prompts."""
        grids = [(int(m.group(1)), path) for path in self.validation.glob("step=*.png")
                 if (m := re.fullmatch(r"step=(\d+)\.png", path.name))]
        grids = [(at, path) for at, path in grids if step is None or at <= step]
        if not grids:
            return None
        at, path = max(grids)
        prompts_file = self.validation / PROMPTS
        lines = prompts_file.read_text().splitlines() if prompts_file.is_file() else []
        return ValidationGrid(at, [line.split(": ", 1)[-1] for line in lines], path)

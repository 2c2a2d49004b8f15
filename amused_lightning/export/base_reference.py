"""The base model an adapters-only export goes on: named in base_model.json (and in its card), not copied."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from amused_lightning.formats import BASE_NAME
from amused_lightning.model.components import EMBEDDED
from amused_lightning.model.presets import PRESETS
from amused_lightning.model.spec import ModelSpec


@dataclass(frozen=True)
class BaseReference:
    """A base pipeline by name: a Hub id or a folder, at a revision and variant."""

    pretrained: str
    revision: str | None = None
    variant: str | None = None

    @classmethod
    def of(cls, spec: ModelSpec) -> BaseReference:
        return cls(spec.pretrained, spec.revision, spec.variant)


def nameable_base(spec: ModelSpec) -> bool:
    """Whether diffusers can load the base by its name: not a preset (random weights drawn in code) nor a model
    embedded in this package; only such a base may be left out of an export."""
    return spec.pretrained not in PRESETS and spec.pretrained not in EMBEDDED


def write_base_reference(spec: ModelSpec, folder: Path) -> Path:
    """base_model.json in `folder`."""
    path = folder / BASE_NAME
    path.write_text(json.dumps(asdict(BaseReference.of(spec)), indent=2) + "\n")
    return path


def read_base_reference(folder: Path) -> BaseReference | None:
    """The base an adapters-only export in `folder` names, or None for a whole pipeline."""
    path = folder / BASE_NAME
    return BaseReference(**json.loads(path.read_text())) if path.is_file() else None

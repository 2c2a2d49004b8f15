"""One set of sampling settings from validation to inference: those a run's validation draws with travel in its
checkpoint (the module's hyperparameters) and in its export (sampling.json), and `generate` and the model card use
them."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amused_lightning.formats import SAMPLING_NAME
from amused_lightning.model.decoding import GenerationSettings
from amused_lightning.settings import as_settings


@dataclass
class ValidationSampling:
    """How a run's validation draws its images: sampler settings, seed and (when known) the size in pixels."""

    generation: GenerationSettings
    seed: int
    width: int | None = None
    height: int | None = None

    @classmethod
    def of_hparams(cls, hparams: dict[str, Any], resolution: int | None = None) -> ValidationSampling:
        """The validation settings in a module's (or a checkpoint's) hyperparameters; validation draws the model's
        square, `resolution` px a side."""
        validation = hparams.get("validation") or {}
        generation = validation.get("generation") if isinstance(validation, dict) else validation.generation
        return cls(generation_of(generation), int(hparams.get("seed") or 0), resolution, resolution)

    @classmethod
    def read(cls, folder: str | Path) -> ValidationSampling | None:
        """The settings an export wrote into `folder`, or None when it holds none."""
        path = Path(folder) / SAMPLING_NAME
        if not path.is_file():
            return None
        saved = json.loads(path.read_text())
        return cls(generation_of(saved["generation"]), saved["seed"], saved.get("width"), saved.get("height"))

    def write(self, folder: Path) -> Path:
        """sampling.json in `folder`."""
        path = folder / SAMPLING_NAME
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

    def pipeline_arguments(self) -> dict[str, Any]:
        """The keyword arguments of diffusers' AmusedPipeline that draw as the validation did (seed apart)."""
        settings = self.generation
        arguments = {"num_inference_steps": settings.num_inference_steps, "guidance_scale": settings.guidance_scale,
                     "temperature": tuple(settings.temperature),
                     "micro_conditioning_aesthetic_score": settings.aesthetic_score}
        if self.width is not None and self.height is not None:
            arguments.update(height=self.height, width=self.width)
        return arguments


def generation_of(value: Any) -> GenerationSettings:
    """GenerationSettings from a config's dict, a JSON file's or the dataclass itself (the defaults when absent)."""
    settings = as_settings(GenerationSettings, value) or GenerationSettings()
    return dataclasses.replace(settings, temperature=tuple(settings.temperature))

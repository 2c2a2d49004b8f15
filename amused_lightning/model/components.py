"""Load the five aMUSEd components from a hub id, a local pipeline folder, or a preset built in code."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AmusedScheduler, UVit2DModel, VQModel
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from amused_lightning.errors import UserError
from amused_lightning.model.presets import PRESETS, byte_level_clip_tokenizer, clip_text_config
from amused_lightning.quiet import without_transformers_bars
from amused_lightning.seeding import derive_seed

log = logging.getLogger(__name__)

SUBFOLDERS = ("transformer", "vqvae", "text_encoder", "tokenizer", "scheduler")
# Pipelines shipped inside the package, by name: no download, no build step. A local folder of the same name is
# reached by a path such as ./toy.
EMBEDDED = {"toy": Path(__file__).resolve().parents[1] / "pretrained" / "toy"}


class ComponentLoadError(UserError, RuntimeError):
    """A component could not be loaded from the source named in `model.pretrained`."""


@dataclass
class Components:
    """The parts of an aMUSEd pipeline."""

    transformer: UVit2DModel
    vqvae: VQModel
    text_encoder: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    scheduler: AmusedScheduler


def load_components(pretrained: str, revision: str | None = None, variant: str | None = None,
                    seed: int = 0) -> Components:
    """All five components of `pretrained`; presets get random weights drawn from `seed`."""
    pretrained = resolve_embedded(pretrained)
    if pretrained in PRESETS:
        return _build_preset(pretrained, seed)
    _check_local_layout(pretrained)
    kwargs = dict(revision=revision, variant=variant)
    with without_transformers_bars():
        return Components(
            transformer=_load(UVit2DModel.from_pretrained, pretrained, "transformer", **kwargs),
            vqvae=_load(VQModel.from_pretrained, pretrained, "vqvae", **kwargs),
            text_encoder=_load(CLIPTextModelWithProjection.from_pretrained, pretrained, "text_encoder", **kwargs),
            tokenizer=_load(CLIPTokenizer.from_pretrained, pretrained, "tokenizer", revision=revision),
            scheduler=_load(AmusedScheduler.from_pretrained, pretrained, "scheduler", revision=revision),
        )


def load_tokenizer(pretrained: str, revision: str | None = None) -> CLIPTokenizer:
    """Only the tokenizer of `pretrained`: no weights load (the data check counts caption tokens with it)."""
    pretrained = resolve_embedded(pretrained)
    if pretrained in PRESETS:
        return byte_level_clip_tokenizer()
    _check_local_layout(pretrained)
    return _load(CLIPTokenizer.from_pretrained, pretrained, "tokenizer", revision=revision)


def load_grid_configs(pretrained: str, revision: str | None = None) -> tuple[dict, dict]:
    """The VQ model's and the transformer's configs of `pretrained`, no weights: what token grids it takes."""
    pretrained = resolve_embedded(pretrained)
    if pretrained in PRESETS:
        return PRESETS[pretrained]["vqvae"], PRESETS[pretrained]["transformer"]
    _check_local_layout(pretrained)
    return (_load(VQModel.load_config, pretrained, "vqvae", revision=revision),
            _load(UVit2DModel.load_config, pretrained, "transformer", revision=revision))


def components_identity(pretrained: str, revision: str | None, variant: str | None, seed: int) -> str:
    """What the frozen encoders' weights depend on: preset and seed, hub id and revision, or the local files."""
    pretrained = resolve_embedded(pretrained)
    if pretrained in PRESETS:
        return f"preset:{pretrained}:seed={seed}"
    if not _is_local(pretrained):
        return f"hub:{pretrained}@{revision}:{variant}"
    root = Path(pretrained).expanduser().resolve()
    files = sorted(path for part in ("vqvae", "text_encoder", "tokenizer") for path in (root / part).rglob("*")
                   if path.is_file())
    return f"local:{root}:{variant}:" + ";".join(f"{p.relative_to(root)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                                                 for p in files)


def _build_preset(name: str, seed: int) -> Components:
    """Random-weight components with a preset's architecture, each weighted part drawn from its own seed."""
    spec = PRESETS[name]
    return Components(
        transformer=_seeded(lambda: UVit2DModel(**spec["transformer"]), seed, 0),
        vqvae=_seeded(lambda: VQModel(**spec["vqvae"]), seed, 1),
        text_encoder=_seeded(lambda: CLIPTextModelWithProjection(clip_text_config(name)), seed, 2),
        tokenizer=byte_level_clip_tokenizer(),
        scheduler=AmusedScheduler(**spec["scheduler"]),
    )


def _seeded(build, seed: int, part: int):
    """`build()` under its own seed, leaving the global random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, part))
        return build()


def resolve_embedded(pretrained: str) -> str:
    """The folder of a pipeline shipped in the package (`toy`), else `pretrained` as given."""
    return str(EMBEDDED[pretrained]) if pretrained in EMBEDDED else pretrained


def local_base_folder(pretrained: str, variant: str | None) -> Path | None:
    """The folder of a base pipeline whose files lie on this machine in their default variant (the files a load
    without `variant` reads); None for a preset, a hub id or a variant."""
    pretrained = resolve_embedded(pretrained)
    if pretrained in PRESETS or variant is not None or not _is_local(pretrained):
        return None
    folder = Path(pretrained).expanduser()
    return folder if folder.is_dir() else None


def _is_local(pretrained: str) -> bool:
    """Whether `pretrained` names a path rather than a hub id."""
    return Path(pretrained).expanduser().exists() or pretrained.startswith((".", "/", "~"))


def _check_local_layout(pretrained: str) -> None:
    """Fail early, naming the missing parts, when a local folder is not a diffusers aMUSEd pipeline."""
    if not _is_local(pretrained):
        return
    root = Path(pretrained).expanduser()
    if not root.is_dir():
        raise ComponentLoadError(f"model.pretrained={pretrained!r}: no such folder")
    missing = [name for name in SUBFOLDERS if not (root / name).is_dir()]
    if missing:
        raise ComponentLoadError(
            f"model.pretrained={pretrained!r} is not an aMUSEd pipeline folder: missing subfolders {missing} "
            f"(expected {list(SUBFOLDERS)}, as written by AmusedPipeline.save_pretrained)"
        )


def _load(load, pretrained: str, subfolder: str, **kwargs):
    """`load` (a `from_pretrained` or `load_config`) with an error that says what to do when the hub is out of
    reach."""
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    try:
        return load(pretrained, subfolder=subfolder, **kwargs)
    except (OSError, ConnectionError, ValueError) as error:
        if _is_local(pretrained):
            raise ComponentLoadError(
                f"model.pretrained={pretrained!r}: could not load {subfolder}/ ({error})"
            ) from error
        raise ComponentLoadError(
            f"model.pretrained={pretrained!r} is no local folder (no such path) and {subfolder}/ could not be loaded "
            f"from the Hugging Face Hub, which is unreachable or does not have it. Download the pipeline elsewhere "
            f"(`hf download {pretrained} --local-dir <folder>`) and pass model.pretrained=<folder>, or choose "
            f"{local_choices()}. Cause: {error}"
        ) from error


def local_choices() -> str:
    """The base models that load without a download, as an error lists them."""
    embedded = ", ".join(f"`{name}` (embedded in the package)" for name in EMBEDDED)
    return f"{embedded}, or a random-weight preset for tests, which has learned nothing ({', '.join(PRESETS)})"


def missing_model_message() -> str:
    """What to say when no base model is named."""
    return ("model.pretrained is not set: name the base model to finetune, as a hub id (amused/amused-256, "
            f"amused/amused-512), a local diffusers pipeline folder, {local_choices()}")

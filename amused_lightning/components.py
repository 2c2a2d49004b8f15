"""Load the five aMUSEd components from a hub id, a local pipeline folder, or a preset built in code."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AmusedScheduler, UVit2DModel, VQModel
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from amused_lightning.encoding import pixels_per_token
from amused_lightning.presets import PRESETS, byte_level_clip_tokenizer, clip_text_config
from amused_lightning.seeding import derive_seed

log = logging.getLogger(__name__)

SUBFOLDERS = ("transformer", "vqvae", "text_encoder", "tokenizer", "scheduler")
# Pipelines shipped inside the package, by name: no download, no build step. A local folder of the same name is
# reached by a path such as ./toy.
EMBEDDED = {"toy": Path(__file__).resolve().parent / "pretrained" / "toy"}


class ComponentLoadError(RuntimeError):
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
    return Components(
        transformer=_load(UVit2DModel, pretrained, "transformer", **kwargs),
        vqvae=_load(VQModel, pretrained, "vqvae", **kwargs),
        text_encoder=_load(CLIPTextModelWithProjection, pretrained, "text_encoder", **kwargs),
        tokenizer=load_tokenizer(pretrained, revision),
        scheduler=_load(AmusedScheduler, pretrained, "scheduler", revision=revision),
    )


def load_tokenizer(pretrained: str, revision: str | None = None) -> CLIPTokenizer:
    """The prompt tokenizer of `pretrained` (cheap: used by the data workers)."""
    pretrained = resolve_embedded(pretrained)
    if pretrained in PRESETS:
        return byte_level_clip_tokenizer()
    _check_local_layout(pretrained)
    return _load(CLIPTokenizer, pretrained, "tokenizer", revision=revision)


def vq_downscale_factor(pretrained: str, revision: str | None = None) -> int:
    """How many pixels one image token spans per side, read from the VQ config alone."""
    pretrained = resolve_embedded(pretrained)
    if pretrained in PRESETS:
        return pixels_per_token(PRESETS[pretrained]["vqvae"])
    _check_local_layout(pretrained)
    return pixels_per_token(_load(VQModel, pretrained, "vqvae", revision=revision, config_only=True))


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
    """Random-weight components with a preset's architecture."""
    vqvae, text_encoder, tokenizer, scheduler = _build_preset_frozen_parts(name, seed)
    transformer = _seeded(lambda: UVit2DModel(**PRESETS[name]["transformer"]), seed, 0)
    return Components(transformer, vqvae, text_encoder, tokenizer, scheduler)


def _build_preset_frozen_parts(name: str, seed: int) -> tuple:
    """The VQ model, text encoder, tokenizer and scheduler of a preset, each drawn from its own seed."""
    spec = PRESETS[name]
    vqvae = _seeded(lambda: VQModel(**spec["vqvae"]), seed, 1)
    text_encoder = _seeded(lambda: CLIPTextModelWithProjection(clip_text_config(name)), seed, 2)
    return vqvae, text_encoder, byte_level_clip_tokenizer(), AmusedScheduler(**spec["scheduler"])


def _seeded(build, seed: int, part: int):
    """`build()` under its own seed, leaving the global random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, part))
        return build()


def load_frozen_encoders(pretrained: str, revision: str | None = None, variant: str | None = None,
                         seed: int = 0) -> tuple[VQModel, CLIPTextModelWithProjection]:
    """Just the VQ model and text encoder of `pretrained` (what pre-encoding needs), same weights as the module's."""
    pretrained = resolve_embedded(pretrained)
    if pretrained in PRESETS:
        return _build_preset_frozen_parts(pretrained, seed)[:2]
    _check_local_layout(pretrained)
    kwargs = dict(revision=revision, variant=variant)
    return (_load(VQModel, pretrained, "vqvae", **kwargs),
            _load(CLIPTextModelWithProjection, pretrained, "text_encoder", **kwargs))


def resolve_embedded(pretrained: str) -> str:
    """The folder of a pipeline shipped in the package (`toy`), else `pretrained` as given."""
    return str(EMBEDDED[pretrained]) if pretrained in EMBEDDED else pretrained


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


def _load(cls, pretrained: str, subfolder: str, config_only: bool = False, **kwargs):
    """`cls.from_pretrained` (or `load_config`) with an error that says what to do when the hub is out of reach."""
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    try:
        if config_only:
            return cls.load_config(pretrained, subfolder=subfolder, **kwargs)
        return cls.from_pretrained(pretrained, subfolder=subfolder, **kwargs)
    except (OSError, ConnectionError, ValueError) as error:
        if _is_local(pretrained):
            raise ComponentLoadError(
                f"model.pretrained={pretrained!r}: could not load {subfolder}/ ({error})"
            ) from error
        raise ComponentLoadError(
            f"model.pretrained={pretrained!r}: could not load {subfolder}/ from the Hugging Face Hub, which is "
            f"unreachable or does not have it. Download the pipeline elsewhere "
            f"(`huggingface-cli download {pretrained} --local-dir <folder>`) and pass model.pretrained=<folder>, "
            f"or use a preset ({', '.join(PRESETS)}). Cause: {error}"
        ) from error

"""The aMUSEd model as one object: its five parts, what they were built from, the weights it holds, and `generate`;
training, validation, export and the `generate` command all use it."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import torch
from diffusers import UVit2DModel
from PIL import Image
from torch import nn
from transformers import CLIPTextModelWithProjection

from amused_lightning.errors import SettingError
from amused_lightning.formats import LORA_WEIGHT_NAME
from amused_lightning.model.adapters import has_lora, load_lora_file
from amused_lightning.model.components import Components, components_identity, load_components, local_base_folder
from amused_lightning.model.decoding import GenerationSettings, decode_image_tokens, generate_tokens, to_pil
from amused_lightning.model.draws import Generators, seeded_generators
from amused_lightning.model.encoding import (
    FrozenEncoders,
    encode_prompts,
    pixels_per_token,
    token_grid_multiple,
    tokenize_prompts,
)
from amused_lightning.model.memory import encoding_parts, on_device, sampling_parts
from amused_lightning.model.saving import clean_copy, copy_part, save_diffusers_model
from amused_lightning.model.spec import ModelSpec
from amused_lightning.model.start_images import StartImages, decoding_start
from amused_lightning.quiet import without_transformers_bars
from amused_lightning.run.checkpoint import RunCheckpoint

Resolution = int | tuple[int, int]  # a square's side, or (width, height), in pixels
MODEL_INDEX = {
    "_class_name": "AmusedPipeline",
    "scheduler": ["diffusers", "AmusedScheduler"],
    "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "transformer": ["diffusers", "UVit2DModel"],
    "vqvae": ["diffusers", "VQModel"],
}


class AmusedModel(nn.Module):
    """A transformer that predicts masked VQ image tokens from CLIP's prompt embeddings, with the VQ model, text
    encoder, tokenizer and scheduler of its pipeline, and the finetuning mode of its spec."""

    def __init__(self, parts: Components, spec: ModelSpec, weights: str = "trained"):
        super().__init__()
        self.transformer, self.vqvae, self.text_encoder = parts.transformer, parts.vqvae, parts.text_encoder
        self.tokenizer, self.scheduler = parts.tokenizer, parts.scheduler
        self.spec = spec
        self.weights = weights
        """Which weights the trained parameters hold: "trained", or "ema" (their average)."""

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> AmusedModel:
        """The base components with the spec's finetuning mode applied: only the trained weights require grad."""
        parts = load_components(spec.pretrained, spec.revision, spec.variant, seed=spec.seed)
        spec.finetuning.apply(parts)
        return cls(parts, spec)

    @classmethod
    def from_checkpoint(cls, checkpoint: RunCheckpoint | str | Path, weights: str | None = None) -> AmusedModel:
        """The base model of a run checkpoint (a file written by `fit`, or the end of one) with its trained weights,
        or their EMA (by default when the run kept one); for inference."""
        run = checkpoint if isinstance(checkpoint, RunCheckpoint) else RunCheckpoint.read(checkpoint)
        model = cls.from_spec(ModelSpec.from_hparams(run.hparams))
        model.weights, state = run.weights(weights)
        model.load_trained_state(state)
        return model.for_inference()

    @classmethod
    def from_pretrained(cls, pretrained: str, lora_file: str | Path | None = None, revision: str | None = None,
                        variant: str | None = None) -> AmusedModel:
        """A pipeline folder, hub id or preset (at `revision`, `variant`), with a diffusers-layout LoRA file applied if
        given; for inference."""
        parts = load_components(pretrained, revision, variant)
        if lora_file is not None:
            load_lora_file(Path(lora_file), {"transformer": parts.transformer, "text_encoder": parts.text_encoder})
        return cls(parts, ModelSpec(pretrained, revision, variant)).for_inference()

    def save_pretrained(self, folder: Path, merge_lora: bool = False) -> list[Path]:
        """A folder `AmusedPipeline.from_pretrained` loads (every part a clean copy: no adapters, no training
        wrappers), with the adapters folded in when `merge_lora`, else beside it as the LoRA file (diffusers' layout).
        Parts whose weights are the base's are copied file by file from a local base folder, not re-serialised.
        Returns what it wrote."""
        finetuning = self.spec.finetuning
        # A merged pipeline already holds the adapters: a LoRA file beside it would be applied twice.
        adapters = not merge_lora and finetuning.adapters
        written = [finetuning.save_adapters(self.parts, folder / LORA_WEIGHT_NAME)] if adapters else []
        base = local_base_folder(self.spec.pretrained, self.spec.variant)
        copied = self.unchanged_parts(merge_lora) if base is not None else set()
        for name in sorted(copied):
            copy_part(base, name, folder)
        if "transformer" not in copied:
            save_diffusers_model(clean_copy(UVit2DModel, self.transformer, merge_lora), folder / "transformer")
        with without_transformers_bars():
            if "text_encoder" not in copied:
                clean_copy(CLIPTextModelWithProjection, self.text_encoder, merge_lora).save_pretrained(
                    folder / "text_encoder")
        if "vqvae" not in copied:
            save_diffusers_model(self.vqvae, folder / "vqvae")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.scheduler.save_pretrained(folder / "scheduler")
        index = {**MODEL_INDEX, "_diffusers_version": diffusers.__version__}
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
        return [*written, folder]

    def unchanged_parts(self, merge_lora: bool) -> set[str]:
        """The weight parts an export holds as the base has them: the VQ model, a frozen part, and a part whose
        adapters stay unmerged (its base weights never train)."""
        unchanged = {"vqvae"}
        for name in ("transformer", "text_encoder"):
            mode = getattr(self.spec.finetuning, name)
            # A frozen part carrying adapters the spec does not know (a LoRA file loaded onto it) has changed.
            if (mode.adapter is not None and not merge_lora) or (not mode.trains and not has_lora(getattr(self, name))):
                unchanged.add(name)
        return unchanged

    def for_inference(self) -> AmusedModel:
        """Every weight frozen, every part in eval mode."""
        return self.requires_grad_(False).eval()

    @property
    def parts(self) -> Components:
        return Components(self.transformer, self.vqvae, self.text_encoder, self.tokenizer, self.scheduler)

    @property
    def mask_id(self) -> int:
        """The token id of a masked image token: the transformer's last."""
        return self.transformer.config.vocab_size - 1

    @property
    def text_encoder_trains(self) -> bool:
        return any(p.requires_grad for p in self.text_encoder.parameters())

    @property
    def pixels_per_token(self) -> int:
        return pixels_per_token(self.vqvae.config)

    @property
    def size_step(self) -> int:
        """What the sides of a generated image must be multiples of, in pixels: the VQ's pixels per token times what
        the transformer's token grid sides must be multiples of."""
        return self.pixels_per_token * token_grid_multiple(self.transformer.config)

    @property
    def resolution(self) -> int:
        """The side of the square the model draws by default."""
        return self.transformer.config.sample_size * self.pixels_per_token

    def frozen_encoders(self) -> FrozenEncoders:
        """The tokenizer and frozen encoders the data side pre-encodes with, and what their weights depend on."""
        spec = self.spec
        return FrozenEncoders(self.tokenizer, self.vqvae, self.text_encoder,
                              components_identity(spec.pretrained, spec.revision, spec.variant, spec.seed),
                              self.text_encoder_trains, token_grid_multiple(self.transformer.config))

    def trained_keys(self) -> set[str]:
        """State-dict keys of the weights being trained."""
        return {name for name, param in self.named_parameters() if param.requires_grad}

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The trained weights, detached on the CPU: what a checkpoint holds of the model."""
        return {name: param.detach().cpu() for name, param in self.named_parameters() if param.requires_grad}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put `transformer.*` / `text_encoder.*` weights (a checkpoint's or an EMA's) into the trained weights; the
        model holds those tensors themselves where it can (`load_weights`)."""
        for prefix in ("transformer", "text_encoder"):
            part = getattr(self, prefix)
            trained = {name for name, param in part.named_parameters() if param.requires_grad}
            weights = {key[len(prefix) + 1:]: value for key, value in state.items() if key.startswith(prefix + ".")}
            if trained - weights.keys() or weights.keys() - set(part.state_dict()):
                missing = sorted(trained - weights.keys()) or sorted(weights.keys() - set(part.state_dict()))
                raise SettingError(f"the checkpoint's {prefix} weights do not fit this model (for example "
                                   f"{missing[:3]}): it was written by a different model or finetuning mode")
            load_weights(part, weights)

    @torch.no_grad()
    def generate_pixels(self, prompts: list[str], settings: GenerationSettings | None = None,
                        seed: int | list[int] = 0, resolution: Resolution | None = None,
                        start: StartImages | None = None, decode_chunk_size: int | None = None,
                        negative_prompt: str = "") -> torch.Tensor:
        """(B, 3, H, W) pixels for `prompts`, sampled as AmusedPipeline does with a generator seeded by `seed` (a list:
        one seed per image, each image then independent of the others), guided away from `negative_prompt`, at
        `resolution` (default: the model's square); from `start` images as AmusedImg2ImgPipeline
        (AmusedInpaintPipeline with masks) does; decoded `decode_chunk_size` images at a time (all at once by
        default, as AmusedPipeline). The text encoder and the VQ parts are on the transformer's device only while
        they run."""
        settings = settings or GenerationSettings()
        device = next(self.transformer.parameters()).device
        resolution = resolution or self.resolution
        width, height = (resolution, resolution) if isinstance(resolution, int) else resolution
        with on_device([self.text_encoder], device):
            hidden, pooled = encode_prompts(self.text_encoder, tokenize_prompts(self.tokenizer, prompts).to(device))
            # One negative prompt per prompt, as AmusedPipeline encodes them: batch composition can move the last bits.
            negative = tokenize_prompts(self.tokenizer, [negative_prompt] * len(prompts)).to(device)
            empty = encode_prompts(self.text_encoder, negative)
        generator = seeded_generators(seed, device)
        begin = self._decoding_start(start, len(prompts), (width, height), settings, generator, device)
        factor = self.pixels_per_token
        tokens = generate_tokens(self.transformer, hidden, pooled, *empty, (height // factor, width // factor),
                                 (width, height), settings, self.mask_id, generator, begin)
        with on_device(sampling_parts(self.vqvae), device):
            return decode_image_tokens(self.vqvae, tokens, decode_chunk_size)

    def _decoding_start(self, start: StartImages | None, count: int, size: tuple[int, int],
                        settings: GenerationSettings, generator: Generators, device: torch.device):
        """The start images' masked tokens (image-to-image, inpainting), or None to decode from all-masked."""
        if start is None:
            return None
        if len(start.images) != count:
            raise SettingError(f"{len(start.images)} start images for {count} prompts: give one per prompt")
        with on_device(encoding_parts(self.vqvae), device):
            return decoding_start(self.vqvae, start, size, settings.num_inference_steps, self.mask_id, generator)

    def generate(self, prompts: list[str], settings: GenerationSettings | None = None, seed: int | list[int] = 0,
                 resolution: Resolution | None = None, start: StartImages | None = None,
                 decode_chunk_size: int | None = None, negative_prompt: str = "") -> list[Image.Image]:
        """`generate_pixels` as PIL images."""
        return to_pil(self.generate_pixels(prompts, settings, seed, resolution, start, decode_chunk_size,
                                           negative_prompt))


def load_weights(part: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load `weights` into `part`: a tensor of the dtype and device the part holds is taken as it is, not copied into
    the part's own (for a base loaded from safetensors, its file's copy-on-write pages, faulted in one by one: 1.2 s
    for amused-512's 2.4 GB); the rest are copied and cast."""
    current = part.state_dict()
    taken = {name: tensor for name, tensor in weights.items()
             if (tensor.dtype, tensor.device) == (current[name].dtype, current[name].device)}
    with torch.no_grad():
        part.load_state_dict(taken, strict=False, assign=True)
        part.load_state_dict({name: weights[name] for name in weights.keys() - taken.keys()}, strict=False)

"""Write PNGs for prompts from a run checkpoint, an exported pipeline folder, or a base model plus a LoRA file; by
default with the sampling settings the run validated with, into outputs/<date>/, each PNG holding its prompt, seed and
settings.

    python -m amused_lightning generate "a pixel art character" --checkpoint runs/x/checkpoints/last.ckpt
    python -m amused_lightning generate "a cat in [V] style" --pipeline runs/x/export -o out/
    python -m amused_lightning generate "a cat" --pretrained amused/amused-256 --lora runs/x/export -o out/
    python -m amused_lightning generate "a cat" --pipeline runs/x/export --negative-prompt "blurry" --num-images 4
    python -m amused_lightning generate "a cat" --pipeline runs/x/export --image start.png --strength 0.5 -o out/
    python -m amused_lightning generate "a cat" --pipeline runs/x/export --image start.png --mask mask.png -o out/
"""

from __future__ import annotations

import argparse
import dataclasses
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from amused_lightning.commands.config_file import CommandParser, add_config_argument, parse_with_config
from amused_lightning.commands.generate_files import default_output, next_number, save_new
from amused_lightning.errors import SettingError
from amused_lightning.formats import BASE_NAME, CHECKPOINT_LORA_SUFFIX, LORA_WEIGHT_NAME, WEIGHT_CHOICES

if TYPE_CHECKING:
    from PIL import Image

    from amused_lightning.model.amused import AmusedModel
    from amused_lightning.model.sampling import ValidationSampling
    from amused_lightning.model.start_images import StartImages
    from amused_lightning.run.checkpoint import RunCheckpoint

BUILT_IN = {"steps": 12, "guidance_scale": 10.0, "seed": 0}
"""What `generate` draws with when neither the command line nor the model says (AmusedPipeline's defaults)."""


def lora_file(args: argparse.Namespace) -> Path | None:
    """The LoRA file to apply: --lora (a file, or a folder holding one), else the one in a --pipeline folder."""
    lora = Path(args.lora) if args.lora else Path(args.pipeline) / LORA_WEIGHT_NAME if args.pipeline else None
    if lora is not None and lora.is_dir():
        lora = lora / LORA_WEIGHT_NAME
    return lora if lora is not None and (args.lora or lora.is_file()) else None


def load_model(args: argparse.Namespace, run: RunCheckpoint | None) -> AmusedModel:
    """The model named by exactly one of --checkpoint (read as `run`), --pipeline, --pretrained (+ --lora)."""
    from amused_lightning.export.base_reference import read_base_reference
    from amused_lightning.model.amused import AmusedModel

    if run is not None:
        return AmusedModel.from_checkpoint(run, args.weights)
    # An unmerged export keeps its adapters in a LoRA file, beside the base pipeline or naming the base it goes on.
    base = read_base_reference(Path(args.pipeline)) if args.pipeline else None
    if base is not None:
        return AmusedModel.from_pretrained(base.pretrained, lora_file(args), base.revision, base.variant)
    return AmusedModel.from_pretrained(args.pipeline or args.pretrained, lora_file(args))


def lora_checkpoint(lora: str | None) -> Path | None:
    """The checkpoint a LoRA file was written beside (step=200.lora.safetensors -> step=200.ckpt), if it is there."""
    if not lora or not lora.endswith(CHECKPOINT_LORA_SUFFIX):
        return None
    checkpoint = Path(lora[:-len(CHECKPOINT_LORA_SUFFIX)] + ".ckpt")
    return checkpoint if checkpoint.is_file() else None


def model_sampling(args: argparse.Namespace, run: RunCheckpoint | None) -> tuple[ValidationSampling | None, str]:
    """The validation settings the model came with (a checkpoint's, that beside a --lora file, or an export's
    sampling.json), and where."""
    from amused_lightning.model.sampling import ValidationSampling
    from amused_lightning.run.checkpoint import RunCheckpoint

    checkpoint = args.checkpoint or lora_checkpoint(args.lora)
    if checkpoint:
        hparams = (run or RunCheckpoint.read(checkpoint)).hparams
        return ValidationSampling.of_hparams(hparams), f"the validation settings in {checkpoint}"
    folder = args.pipeline or (args.lora if args.lora and Path(args.lora).is_dir() else None)
    found = ValidationSampling.read(folder) if folder else None
    return found, f"the validation settings in {folder}" if found else ""


def chosen_sampling(args: argparse.Namespace, found: ValidationSampling | None) -> ValidationSampling:
    """Each setting from the command line, else from the model's validation settings, else built in."""
    from amused_lightning.model.decoding import GenerationSettings
    from amused_lightning.model.sampling import ValidationSampling

    found = found or ValidationSampling(GenerationSettings(BUILT_IN["steps"], BUILT_IN["guidance_scale"]),
                                        BUILT_IN["seed"])
    generation = dataclasses.replace(
        found.generation,
        num_inference_steps=found.generation.num_inference_steps if args.steps is None else args.steps,
        guidance_scale=found.generation.guidance_scale if args.guidance_scale is None else args.guidance_scale)
    return dataclasses.replace(found, generation=generation, seed=found.seed if args.seed is None else args.seed)


def sampling_line(sampling: ValidationSampling, size: tuple[int, int], origin: str, args: argparse.Namespace) -> str:
    """One line: what `generate` draws with and where each value came from."""
    settings = sampling.generation
    given = [f"--{name.replace('_', '-')}" for name in ("steps", "guidance_scale", "seed", "resolution", "width",
                                                         "height") if getattr(args, name) is not None]
    where = origin or "built-in defaults (the model records no validation settings)"
    return (f"sampling: {settings.num_inference_steps} steps, guidance {settings.guidance_scale:g}, temperature "
            f"{settings.temperature[0]:g} to {settings.temperature[1]:g}, "
            f"aesthetic score {settings.aesthetic_score:g}, "
            f"seed {sampling.seed} (+1 per image of a prompt), {size[0]}x{size[1]} px; from {where}"
            + (f", {' '.join(given)} from the command line" if given else ""))


def read_start_files(args: argparse.Namespace, steps: int) -> tuple[Image.Image | None, Image.Image | None]:
    """--image and --mask read, and --strength checked against the decoding steps, before the model loads."""
    from amused_lightning.model.start_images import check_strength, read_image, read_mask, strength_or_default

    if args.image is None:
        return None, None
    image = read_image(args.image, "--image")
    mask = read_mask(args.mask, "--mask") if args.mask is not None else None
    check_strength(strength_or_default(args.strength, mask is not None), steps, "--strength")
    return image, mask


def start_for(image: Image.Image | None, mask: Image.Image | None, strength: float | None,
              count: int) -> StartImages | None:
    """The one --image (and --mask) as the start of `count` prompts; None without --image."""
    from amused_lightning.model.start_images import StartImages

    if image is None:
        return None
    return StartImages([image] * count, None if mask is None else [mask] * count, strength)


def image_size(args: argparse.Namespace, model: AmusedModel, sampling: ValidationSampling) -> tuple[int, int]:
    """(width, height) from --width, --height and --resolution, else the validation's size, else the model's square;
    an error naming the option whose value the model's token grid cannot take."""
    factor, step = model.pixels_per_token, model.size_step
    for name in ("resolution", "width", "height"):
        value = getattr(args, name)
        if value is not None and (value < step or value % step):
            halved = ", times 2: the transformer halves its token grid" if step > factor else ""
            raise SettingError(f"--{name} {value} is not a positive multiple of {step} px ({factor} px per token"
                               f"{halved}): try {max(step, value // step * step)}")
    width = args.width or args.resolution or sampling.width or model.resolution
    return width, args.height or args.resolution or sampling.height or model.resolution


def command_parser() -> CommandParser:
    """The command's options, as `--help` lists them (each with its default)."""
    parser = CommandParser(prog="python -m amused_lightning generate", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    model = "default: the model's validation settings, else"
    parser.add_argument("prompts", nargs="*", help="one or more prompts (or `prompts:` in --config)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="folder for the PNGs (default: outputs/<today's date>, in the current folder); files "
                        "already there are never replaced")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a .ckpt written by fit")
    source.add_argument("--pipeline", help="an exported folder: a pipeline (its pytorch_lora_weights.safetensors, if "
                        f"any, applied), or adapters with a {BASE_NAME} naming their base")
    source.add_argument("--pretrained", help="base model: hub id, pipeline folder or preset; add --lora")
    parser.add_argument("--lora", help="LoRA file, or folder holding pytorch_lora_weights.safetensors")
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default=None,
                        help="for --checkpoint: EMA or raw weights (default: ema when the run kept one)")
    parser.add_argument("--steps", type=int, default=None, help=f"decoding steps ({model} {BUILT_IN['steps']})")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance; 1 or less turns it off "
                        f"({model} {BUILT_IN['guidance_scale']:g})")
    parser.add_argument("--negative-prompt", default="",
                        help="what guidance steers away from (default: the empty prompt)")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"image i of each prompt uses seed + i, so `--seed S --num-images 1` redraws the image of "
                        f"seed S alone ({model} {BUILT_IN['seed']})")
    parser.add_argument("--resolution", type=int, default=None,
                        help="pixels per side (default: the model's validation size, else the model's square)")
    parser.add_argument("--width", type=int, default=None, help="image width in pixels (default: --resolution)")
    parser.add_argument("--height", type=int, default=None, help="image height in pixels (default: --resolution)")
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt (default: 1)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="images sampled together (default: 4); each image keeps its own seed")
    parser.add_argument("--image", type=Path, help="start image (image-to-image), stretched to the resolution "
                        "(default: none, draw from the prompt alone)")
    parser.add_argument("--mask", type=Path, help="with --image: repaint where the mask is white, keep the rest "
                        "(inpainting; default: none)")
    parser.add_argument("--strength", type=float, default=None, help="with --image: share of the decoding steps "
                        "that redraw it, in (0, 1] (default 0.5, or 1 with --mask)")
    add_config_argument(parser)
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The options of `argv` (and of its --config file), with the combinations that cannot work refused."""
    parser = command_parser()
    args = parse_with_config(parser, argv)
    if not args.prompts:
        parser.error("give one or more prompts (or a `prompts:` list in --config)")
    if args.lora and not args.pretrained:
        parser.error("--lora goes with --pretrained")
    if args.weights and not args.checkpoint:
        parser.error("--weights goes with --checkpoint")
    for name in ("mask", "strength"):
        if getattr(args, name) is not None and args.image is None:
            parser.error(f"--{name} goes with --image")
    for name in ("num_images", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} must be at least 1")
    return args


def image_metadata(args: argparse.Namespace, prompt: str, seed: int, sampling: ValidationSampling,
                   size: tuple[int, int]) -> dict[str, str]:
    """What drew one image, as PNG text: prompt, negative prompt, seed, settings, size and model."""
    settings = sampling.generation
    facts = {"prompt": prompt, "negative_prompt": args.negative_prompt, "seed": seed,
             "steps": settings.num_inference_steps, "guidance_scale": settings.guidance_scale,
             "temperature": list(settings.temperature), "aesthetic_score": settings.aesthetic_score,
             "width": size[0], "height": size[1],
             "model": args.checkpoint or args.pipeline or args.pretrained, "lora": args.lora,
             "weights": args.weights, "image": args.image, "mask": args.mask, "strength": args.strength}
    return {key: str(value) for key, value in facts.items() if value is not None}


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse(argv)
    # torch and diffusers load only once the arguments are known good: `--help` and usage errors stay instant.
    import torch

    from amused_lightning.model.decoding import check_generation_settings
    from amused_lightning.progress import iterate
    from amused_lightning.run.checkpoint import RunCheckpoint
    from amused_lightning.threads import set_cpu_threads

    set_cpu_threads()
    run = RunCheckpoint.read(args.checkpoint) if args.checkpoint else None
    found, origin = model_sampling(args, run)
    sampling = chosen_sampling(args, found)
    check_generation_settings(sampling.generation, "--steps")
    start_image, start_mask = read_start_files(args, sampling.generation.num_inference_steps)
    model = load_model(args, run).to("cuda" if torch.cuda.is_available() else "cpu")
    size = image_size(args, model, sampling)
    print(sampling_line(sampling, size, origin, args))
    drawn = [(prompt, sampling.seed + i) for prompt in args.prompts for i in range(args.num_images)]
    output = args.output or default_output(date.today())
    output.mkdir(parents=True, exist_ok=True)
    number, paths = next_number(output), []
    starts = range(0, len(drawn), args.batch_size)
    for start in iterate(starts, len(starts), "batch", "batches"):
        batch = drawn[start:start + args.batch_size]
        images = model.generate([prompt for prompt, _ in batch], sampling.generation,
                                seed=[seed for _, seed in batch], resolution=size,
                                start=start_for(start_image, start_mask, args.strength, len(batch)),
                                negative_prompt=args.negative_prompt)
        for image, (prompt, seed) in zip(images, batch):
            metadata = image_metadata(args, prompt, seed, sampling, size)
            path, taken = save_new(image, output, number, seed, prompt, metadata)
            paths.append(path)
            number = taken + 1
    for path in paths:
        print(f"wrote {path}")
    return paths

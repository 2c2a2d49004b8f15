"""Write PNGs for prompts from a run checkpoint, an exported pipeline folder, or a base model plus a LoRA file.

    python -m amused_lightning generate "a pixel art character" --checkpoint runs/x/checkpoints/last.ckpt -o out/
    python -m amused_lightning generate "a cat in [V] style" --pipeline runs/x/export -o out/
    python -m amused_lightning generate "a cat" --pretrained amused/amused-256 --lora runs/x/export -o out/
    python -m amused_lightning generate "a cat" --pipeline runs/x/export --image start.png --strength 0.5 -o out/
    python -m amused_lightning generate "a cat" --pipeline runs/x/export --image start.png --mask mask.png -o out/
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from amused_lightning.commands.config_file import CommandParser, add_config_argument, parse_with_config
from amused_lightning.errors import ExistingOutputError, SettingError
from amused_lightning.formats import LORA_WEIGHT_NAME, WEIGHT_CHOICES

if TYPE_CHECKING:
    from PIL import Image

    from amused_lightning.model.amused import AmusedModel
    from amused_lightning.model.start_images import StartImages


def output_names(prompts: list[str], num_images: int) -> list[str]:
    """One file name per (prompt, image): index, then the prompt as a short slug."""
    names = []
    for p, prompt in enumerate(prompts):
        slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "empty"
        names += [f"{p:03d}-{i:02d}-{slug}.png" for i in range(num_images)]
    return names


def load_model(args: argparse.Namespace) -> AmusedModel:
    """The model named by exactly one of --checkpoint, --pipeline, --pretrained (+ --lora)."""
    from amused_lightning.model.amused import AmusedModel

    if args.checkpoint:
        return AmusedModel.from_checkpoint(args.checkpoint, args.weights)
    # An unmerged export keeps its adapters in a LoRA file beside the base weights: apply it as diffusers would.
    lora = Path(args.lora) if args.lora else Path(args.pipeline) / LORA_WEIGHT_NAME if args.pipeline else None
    if lora is not None and lora.is_dir():
        lora = lora / LORA_WEIGHT_NAME
    applied = lora if lora is not None and (args.lora or lora.is_file()) else None
    return AmusedModel.from_pretrained(args.pipeline or args.pretrained, applied)


def read_start_files(args: argparse.Namespace) -> tuple[Image.Image | None, Image.Image | None]:
    """--image and --mask read, and --strength checked against --steps, before the model loads."""
    from amused_lightning.model.start_images import check_strength, read_image, read_mask, strength_or_default

    if args.image is None:
        return None, None
    image = read_image(args.image, "--image")
    mask = read_mask(args.mask, "--mask") if args.mask is not None else None
    check_strength(strength_or_default(args.strength, mask is not None), args.steps, "--strength")
    return image, mask


def start_for(image: Image.Image | None, mask: Image.Image | None, strength: float | None,
              count: int) -> StartImages | None:
    """The one --image (and --mask) as the start of `count` prompts; None without --image."""
    from amused_lightning.model.start_images import StartImages

    if image is None:
        return None
    return StartImages([image] * count, None if mask is None else [mask] * count, strength)


def image_size(args: argparse.Namespace, model: AmusedModel) -> tuple[int, int]:
    """(width, height) from --width, --height and --resolution (default: the model's square); an error naming the
    option whose value the model's token grid cannot take."""
    factor, step = model.pixels_per_token, model.size_step
    for name in ("resolution", "width", "height"):
        value = getattr(args, name)
        if value is not None and (value < step or value % step):
            halved = ", times 2: the transformer halves its token grid" if step > factor else ""
            raise SettingError(f"--{name} {value} is not a positive multiple of {step} px ({factor} px per token"
                               f"{halved}): try {max(step, value // step * step)}")
    side = args.resolution or model.resolution
    return args.width or side, args.height or side


def command_parser() -> CommandParser:
    """The command's options, as `--help` lists them."""
    parser = CommandParser(prog="python -m amused_lightning generate", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompts", nargs="*", help="one or more prompts (or `prompts:` in --config)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the PNGs")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a .ckpt written by fit")
    source.add_argument("--pipeline", help="an aMUSEd pipeline folder; a pytorch_lora_weights.safetensors in it "
                        "(an unmerged export) is applied")
    source.add_argument("--pretrained", help="base model: hub id, pipeline folder or preset; add --lora")
    parser.add_argument("--lora", help="LoRA file, or folder holding pytorch_lora_weights.safetensors")
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default=None,
                        help="for --checkpoint: EMA or raw weights (default: ema when the run kept one)")
    parser.add_argument("--steps", type=int, default=12, help="decoding steps")
    parser.add_argument("--guidance-scale", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0, help="same seed and batch size give the same images")
    parser.add_argument("--resolution", type=int, default=None, help="pixels per side (default: the model's)")
    parser.add_argument("--width", type=int, default=None, help="image width in pixels (default: --resolution)")
    parser.add_argument("--height", type=int, default=None, help="image height in pixels (default: --resolution)")
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt")
    parser.add_argument("--batch-size", type=int, default=4, help="images sampled together")
    parser.add_argument("--overwrite", action="store_true", help="replace PNGs that already exist")
    parser.add_argument("--image", type=Path, help="start image (image-to-image), stretched to the resolution")
    parser.add_argument("--mask", type=Path, help="with --image: repaint where the mask is white, keep the rest "
                        "(inpainting)")
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


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse(argv)
    # torch and diffusers load only once the arguments are known good: `--help` and usage errors stay instant.
    import torch

    from amused_lightning.model.decoding import GenerationSettings, check_generation_settings
    from amused_lightning.progress import iterate
    from amused_lightning.threads import set_cpu_threads

    set_cpu_threads()
    settings = GenerationSettings(num_inference_steps=args.steps, guidance_scale=args.guidance_scale)
    check_generation_settings(settings, "--steps")
    start_image, start_mask = read_start_files(args)
    paths = [args.output / name for name in output_names(args.prompts, args.num_images)]
    existing = [p.name for p in paths if p.exists()]
    if existing and not args.overwrite:
        raise ExistingOutputError(f"{len(existing)} files already exist in {str(args.output)!r} ({existing[0]}, ...): "
                                  "pass --overwrite to replace them")
    model = load_model(args).to("cuda" if torch.cuda.is_available() else "cpu")
    size = image_size(args, model)
    prompts = [prompt for prompt in args.prompts for _ in range(args.num_images)]
    args.output.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(prompts), args.batch_size)
    for start in iterate(starts, len(starts), "batch", "batches"):
        batch = prompts[start:start + args.batch_size]
        images = model.generate(batch, settings, seed=args.seed + start, resolution=size,
                                   start=start_for(start_image, start_mask, args.strength, len(batch)))
        for image, path in zip(images, paths[start:start + args.batch_size]):
            image.save(path)
    for path in paths:
        print(f"wrote {path}")
    return paths

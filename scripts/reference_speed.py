"""Whole-process speed of our `fit` against diffusers' `train_amused.py` on the same work, A/B pairs interleaved.

    python scripts/reference_speed.py --reference /path/to/train_amused.py [--cases 256-lora-1ep ...] [--pairs 2]

Nothing is fetched: the user gives a copy of `train_amused.py`. Both sides load the same random-weight pipeline of a
real architecture (`amused-256-arch` / `amused-512-arch`, saved once to a folder, as the reference needs one), train
on the same square images (named by their prompt, read by the reference's `--instance_data_dir` and our
`ImageFolder`), with the same batch, steps, learning rate and mode (LoRA r 16 / alpha 32 on to_q/to_k/to_v, or full
finetuning), fp32, no validation, each writing what it writes at the end by default (the reference its accelerate
state and transformer, ours its last checkpoint and export). Each run is a fresh process with a fresh output folder
and a fresh pre-encoded cache, timed from start to exit; within a pair the order alternates. The reference logs to no
tracker (its default wandb needs an account; `--report_to tensorboard` crashes it), and where torchvision is missing
(a CPU-only torch build cannot have it) it gets a few PIL-based stand-ins for the transforms it calls.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MIXED_PRECISION = {"32": "no", "16-mixed": "fp16", "bf16-mixed": "bf16"}
TRACKERS_TO_SKIP = ("comet_ml", "aim", "clearml", "dvclive", "mlflow")  # accelerate skips one that is not installed


@dataclass(frozen=True)
class Case:
    """One comparison: an architecture, a mode, how many images, batch size and steps."""

    name: str
    preset: str
    resolution: int
    lora: bool
    images: int
    batch: int
    steps: int
    precision: str = "32"
    """Ours: trainer.precision; the reference gets the matching --mixed_precision (no, fp16, bf16)."""
    accelerator: str = "cpu"
    recipe_flags: tuple[str, ...] = ()
    """More flags of ours (a recipe's settings the reference sets by its defaults, or cannot set)."""

    @property
    def epochs(self) -> float:
        return self.steps * self.batch / self.images


CASES = {c.name: c for c in [
    Case("tiny-lora-1ep", "tiny", 64, True, 4, 1, 4),  # a check that both sides run (seconds), not a comparison
    Case("256-lora-1ep", "amused-256-arch", 256, True, 4, 1, 4),
    Case("256-full-1ep", "amused-256-arch", 256, False, 4, 1, 4),
    Case("256-lora-3ep", "amused-256-arch", 256, True, 2, 1, 6),
    Case("512-lora-1ep", "amused-512-arch", 512, True, 4, 1, 4),
    Case("512-full-1ep", "amused-512-arch", 512, False, 4, 1, 4),
    Case("512-lora-3ep", "amused-512-arch", 512, True, 2, 1, 6),
    Case("512-full-3ep", "amused-512-arch", 512, False, 2, 1, 6),
]}

TORCHVISION_STAND_IN = '''"""PIL stand-ins for the torchvision transforms train_amused.py calls."""
import random
from enum import Enum

import numpy as np
import torch
from PIL import Image


class InterpolationMode(Enum):
    BILINEAR = Image.BILINEAR


class Resize:
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
        self.size, self.interpolation = size, interpolation

    def __call__(self, image):
        w, h = image.size
        if min(w, h) == self.size:
            return image
        scale = self.size / min(w, h)
        return image.resize((round(w * scale), round(h * scale)), self.interpolation.value)


class RandomCrop:
    @staticmethod
    def get_params(image, output_size):
        w, h = image.size
        return random.randint(0, h - output_size[0]), random.randint(0, w - output_size[1]), *output_size


class ToTensor:
    def __call__(self, image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class functional:
    @staticmethod
    def crop(image, top, left, height, width):
        return image.crop((left, top, left + width, top + height))
'''


def save_pipeline(preset: str, folder: Path) -> Path:
    """The preset's random-weight pipeline (seed 0) in the diffusers layout, written once."""
    if not (folder / "model_index.json").is_file():
        from diffusers import AmusedPipeline

        from amused_lightning.model.components import load_components

        parts = load_components(preset, seed=0)
        AmusedPipeline(vqvae=parts.vqvae, tokenizer=parts.tokenizer, text_encoder=parts.text_encoder,
                       transformer=parts.transformer, scheduler=parts.scheduler).save_pretrained(folder)
    return folder


def write_images(folder: Path, count: int, size: int) -> Path:
    """`count` square pixel-art-like images of `size` px named by their prompt, written once."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        cells = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(cells).resize((size, size), Image.NEAREST).save(folder / f"a pixel art character {i}.png")
    return folder


LAUNCHER = """\
import atexit, runpy, sys, time, types
stand_in, clock, target = sys.argv[1:4]
sys.argv = sys.argv[3:]
if stand_in:  # put in place after the libraries that look for torchvision themselves (they do without it)
    import accelerate, datasets, diffusers, peft, transformers
    transforms = types.ModuleType('torchvision.transforms')
    exec(stand_in, transforms.__dict__)
    sys.modules['torchvision'] = types.SimpleNamespace(transforms=transforms)
    sys.modules['torchvision.transforms'] = transforms
if clock:  # the host's clock at the end of every optimizer step, printed at exit
    from torch.optim.optimizer import register_optimizer_step_post_hook
    times = []
    register_optimizer_step_post_hook(lambda *args: times.append(time.perf_counter()))
    atexit.register(lambda: print(STEP_TIMES, *(f'{t:.4f}' for t in times), flush=True))
if target.endswith('.py'):
    runpy.run_path(target, run_name='__main__')
else:
    runpy.run_module(target, run_name='__main__', alter_sys=True)
"""
STEP_TIMES = "optimizer step times:"


def launcher(target: str, stand_in: bool = False) -> list[str]:
    """The command prefix that runs `target` (a script, or a module as -m does) and prints when each optimizer step
    ended; with `stand_in`, torchvision stand-ins where torchvision is missing (a CPU-only torch cannot have it)."""
    stand_in = TORCHVISION_STAND_IN if stand_in and importlib.util.find_spec("torchvision") is None else ""
    code = LAUNCHER.replace("STEP_TIMES", repr(STEP_TIMES))
    return [sys.executable, "-c", code, stand_in, "clock", target]


def step_seconds(log: Path, skip: int = 1) -> float | None:
    """Median seconds between optimizer steps after the first `skip` (warm-up) steps, from a launcher's log."""
    lines = [line for line in log.read_text().splitlines() if line.startswith(STEP_TIMES)]
    times = [float(t) for t in lines[-1].split()[len(STEP_TIMES.split()):]] if lines else []
    gaps = [b - a for a, b in zip(times[skip:], times[skip + 1:])]
    return statistics.median(gaps) if gaps else None


def absent_tracker() -> str:
    """A tracker accelerate will skip because its package is not installed."""
    return next(t for t in TRACKERS_TO_SKIP if importlib.util.find_spec(t) is None)


def reference_command(script: Path, case: Case, pipeline: Path, images: Path, output: Path) -> list[str]:
    """`train_amused.py` doing the case's work, without the flags that crash it."""
    command = [*launcher(str(script), stand_in=True), "--pretrained_model_name_or_path", str(pipeline),
               "--instance_data_dir", str(images), "--resolution", str(case.resolution),
               "--train_batch_size", str(case.batch), "--max_train_steps", str(case.steps),
               "--learning_rate", "1e-4", "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--seed", "0",
               "--output_dir", str(output), "--logging_steps", "1", "--report_to", absent_tracker(),
               "--validation_steps", "1000000", "--checkpointing_steps", "1000000",
               "--mixed_precision", MIXED_PRECISION[case.precision]]
    return command + (["--use_lora", "--lora_r", "16", "--lora_alpha", "32"] if case.lora else [])


def our_command(case: Case, pipeline: Path, images: Path, output: Path) -> list[str]:
    """Our `fit` doing the case's work."""
    command = [*launcher("amused_lightning"), "fit", "--model.pretrained", str(pipeline),
               "--data.source", "ImageFolder", "--data.source.path", str(images),
               "--data.resolution", str(case.resolution), "--data.batch_size", str(case.batch),
               "--trainer.max_steps", str(case.steps), "--trainer.accelerator", case.accelerator,
               "--trainer.precision", case.precision,
               "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(output),
               "--model.optimizer.init_args.lr", "1e-4", "--model.lr_schedule.warmup_steps", "0"]
    lora = ["--model.lora.r", "16", "--model.lora.alpha", "32"] if case.lora else []
    return command + lora + list(case.recipe_flags)


@dataclass(frozen=True)
class Run:
    """One whole process: wall seconds, peak resident memory, median seconds per optimizer step after the first."""

    seconds: float
    peak_rss_gb: float
    step_seconds: float | None


def timed(command: list[str], env: dict[str, str], log: Path) -> Run:
    """Run `command` to its end; its wall time and peak resident set (from its own rusage)."""
    with open(log, "w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command[5]} exited with {process.returncode}; its output is in {log}")
    return Run(seconds, usage.ru_maxrss * 1024 / 1e9, step_seconds(log))


def run_side(command_for, workdir: Path, env: dict[str, str], tag: str) -> Run:
    """One run in fresh output and cache folders, removed afterwards (the disk fills up at these sizes)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=workdir))
    try:
        return timed(command_for(scratch / "out"), {**env, "AMUSED_LIGHTNING_CACHE": str(scratch / "cache")},
                     workdir / f"{tag}.log")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def spread(values: list[float], digits: int = 2) -> str:
    """`median (min-max)`."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def compare(case: Case, script: Path, workdir: Path, pairs: int) -> str:
    """The case's markdown row: wall seconds of each side and reference/ours ratios over interleaved pairs."""
    pipeline = save_pipeline(case.preset, workdir / case.preset)
    images = write_images(workdir / f"images-{case.resolution}-{case.images}", case.images, case.resolution)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    ours, reference = [], []
    for pair in range(pairs):
        sides = [("ours", lambda out: our_command(case, pipeline, images, out), env, ours),
                 ("reference", lambda out: reference_command(script, case, pipeline, images, out), env, reference)]
        for tag, command_for, side_env, results in sides if pair % 2 == 0 else sides[::-1]:
            results.append(run_side(command_for, workdir, side_env, f"{case.name}-{tag}-{pair}"))
            print(f"{case.name} pair {pair + 1}/{pairs} {tag}: {results[-1].seconds:.1f} s, "
                  f"{results[-1].peak_rss_gb:.2f} GB", flush=True)
    speedups = [r.seconds / o.seconds for o, r in zip(ours, reference)]
    memory = [o.peak_rss_gb / r.peak_rss_gb for o, r in zip(ours, reference)]
    steady = [r.step_seconds / o.step_seconds for o, r in zip(ours, reference) if o.step_seconds and r.step_seconds]
    return (f"| {case.name} | {case.preset} | {'LoRA' if case.lora else 'full'} | {case.images} | {case.batch} | "
            f"{case.steps} ({case.epochs:g}) | {spread([o.seconds for o in ours], 1)} | "
            f"{spread([r.seconds for r in reference], 1)} | {spread(speedups)}x | "
            f"{spread(steady) + 'x' if steady else 'n/a'} | {spread(memory)}x |")


HEADER = ("| case | architecture | mode | images | batch | steps (epochs) | ours s | reference s | "
          "speed-up (reference s / ours s) | steady step speed-up | peak RSS ours / reference |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True, help="path to a copy of train_amused.py")
    parser.add_argument("--cases", nargs="*", default=list(CASES)[1:], choices=list(CASES), metavar="CASE",
                        help=f"cases to run (default: all but tiny): {', '.join(CASES)}")
    parser.add_argument("--pairs", type=int, default=2, help="interleaved A/B pairs per case")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "amused-reference-speed",
                        help="pipelines, images and logs (kept between invocations)")
    args = parser.parse_args()
    if not args.reference.is_file():
        parser.error(f"--reference {args.reference}: no such file (a copy of diffusers' "
                     "examples/amused/train_amused.py)")
    if args.pairs < 1:
        parser.error(f"--pairs {args.pairs}: at least one pair")
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.cases:
        try:
            rows.append(compare(CASES[name], args.reference.resolve(), args.workdir, args.pairs))
        except RuntimeError as error:
            parser.exit(1, f"error: {error}\n")
        print(rows[-1], flush=True)
    print("\n" + HEADER + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()

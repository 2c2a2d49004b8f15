"""Measure the `toy` base model and the quickstart against issue 9's targets; write a section into BENCHMARKS.md.

    python scripts/toy_benchmark.py [--skip-full] [--seeds 0 1 2] [--grid docs/quickstart-before-after.png]

VQ cell accuracy on held-out images of the whole world; attribute accuracy of the base model on held-out base-world
prompts and on held-out prompts of the held-back concept; the quickstart (wall time of its fit command, installs and
dataset excluded; once per run seed in --seeds, and their mean) and a full finetune with the same data (the first
seed), and the same accuracies after each. Every accuracy is measured at the pipeline's guidance 10 and at the
quickstart's validation guidance (3).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from amused_lightning.callbacks.validation_images import image_grid
from amused_lightning.model.amused import AmusedModel
from amused_lightning.model.components import Components, load_components
from amused_lightning.model.decoding import GenerationSettings, decode_image_tokens, to_pil
from amused_lightning.model.encoding import encode_image_tokens
from amused_lightning.model.spec import ModelSpec
from amused_lightning.toy.image_metrics import ToyWorldScore, palette_cell_agreement
from amused_lightning.toy.world import draw_character, evaluation_characters

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_DATA = ["scripts/make_toy_dataset.py", "data/toy-teal-crown", "--world", "finetune", "--num-images",
                   "72", "--prior-images", "72", "--size", "64"]
QUICKSTART_FIT = ["-m", "amused_lightning", "fit", "--config", "configs/quickstart.yaml",
                  "--trainer.enable_progress_bar", "false"]
# Every weight of the transformer, at a lower rate than LoRA's, and its EMA exported (at lr 1e-3 the EMA drew 3 points
# more of the held-back concept than the raw weights at guidance 3).
FULL_FINETUNE = ["--model.lora", "null", "--export.merge_lora", "false", "--model.optimizer.init_args.lr", "2e-3",
                 "--ema.enabled", "true", "--ema.decay", "0.99", "--trainer.default_root_dir", "runs/quickstart-full"]
SECTION = "## Toy world (issue 9)"
QUICKSTART_CONFIG = yaml.safe_load((ROOT / "configs/quickstart.yaml").read_text())
# The pipeline's default guidance, then the quickstart's validation guidance.
GUIDANCES = (GenerationSettings().guidance_scale,
             QUICKSTART_CONFIG["model"]["validation"]["generation"]["guidance_scale"])


def vq_cell_accuracy(parts: Components, count: int = 64) -> float:
    """Share of cells of held-out toy images (whole world) whose reconstruction has the right palette colour."""
    images = [draw_character(c, 64) for c in evaluation_characters("all", count)]
    pixels = torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2).float() / 255
    reconstructions = to_pil(decode_image_tokens(parts.vqvae, encode_image_tokens(parts.vqvae, pixels)))
    return sum(palette_cell_agreement(a, b) for a, b in zip(images, reconstructions)) / len(images)


def draw(parts: Components, prompts: list[str], guidance: float, seed: int = 0) -> list:
    """Images of `prompts` with the pipeline's default sampling settings but `guidance`."""
    return AmusedModel(parts, ModelSpec("toy")).generate(prompts, GenerationSettings(guidance_scale=guidance), seed)


def world_scores(parts: Components, guidance: float) -> dict[str, dict[str, float]]:
    """ToyWorldScore on the held-out prompts of the base world and of the held-back concept."""
    scores = {}
    for world in ("base", "finetune"):
        prompts = [c.caption() for c in evaluation_characters(world)]
        scores[world] = ToyWorldScore()(prompts, draw(parts, prompts, guidance))
    return scores


def timed_fit(extra: list[str]) -> float:
    """Seconds the quickstart's fit command takes, run as a user would run it."""
    started = time.perf_counter()
    subprocess.run([sys.executable, *QUICKSTART_FIT, *extra], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def before_after_grid(before: Components, after: Components, path: Path) -> None:
    """The quickstart's validation prompts drawn at its validation guidance before (top row) and after (bottom row)
    finetuning, each image enlarged 3 times (nearest neighbour: the cells stay sharp)."""
    prompts, guidance = QUICKSTART_CONFIG["model"]["validation"]["prompts"], GUIDANCES[1]
    images = draw(before, prompts, guidance) + draw(after, prompts, guidance)
    enlarged = [image.resize((3 * image.width, 3 * image.height), Image.Resampling.NEAREST) for image in images]
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(enlarged, columns=len(prompts)).save(path, optimize=True)


def scores_at_each_guidance(parts: Components) -> dict[float, dict[str, dict[str, float]]]:
    """`world_scores` at the pipeline's guidance and at the quickstart's."""
    return {guidance: world_scores(parts, guidance) for guidance in GUIDANCES}


def mean_scores(runs: list[dict[float, dict[str, dict[str, float]]]]) -> dict[float, dict[str, dict[str, float]]]:
    """The scores of several runs averaged, score by score."""
    return {g: {world: {name: float(np.mean([run[g][world][name] for run in runs])) for name in runs[0][g][world]}
                for world in runs[0][g]} for g in runs[0]}


def rows(name: str, scores: dict[float, dict[str, dict[str, float]]]) -> list[str]:
    """Table rows, one per guidance: base-world accuracy and held-back accuracy."""
    return [f"| {name} | {guidance:g} | {s['base']['toy_accuracy']:.1%} | {s['finetune']['toy_held_back']:.1%} | "
            f"{s['finetune']['toy_accuracy']:.1%} |" for guidance, s in scores.items()]


def publish(lines: list[str], section: str = SECTION) -> None:
    """Replace (or add) a script's section of BENCHMARKS.md (this script's by default)."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    head = text.split(section)[0].rstrip() + "\n\n"
    rest = text.split(section)[1] if section in text else ""
    tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
    path.write_text(head + "\n".join([section, "", *lines]) + "\n" + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-full", action="store_true", help="skip the full-finetune run")
    parser.add_argument("--grid", type=Path, default=ROOT / "docs" / "quickstart-before-after.png")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds of the quickstart")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    base = load_components("toy")
    results = {"base": scores_at_each_guidance(base)}
    vq = vq_cell_accuracy(base)
    subprocess.run([sys.executable, *QUICKSTART_DATA], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    runs = [(f"quickstart (LoRA), seed {seed}", ["--seed_everything", str(seed), "--trainer.default_root_dir",
                                                  f"runs/quickstart-seed{seed}"], f"runs/quickstart-seed{seed}")
            for seed in args.seeds]
    if not args.skip_full:
        runs.append(("full finetune", [*FULL_FINETUNE, "--seed_everything", str(args.seeds[0])],
                     "runs/quickstart-full"))
    seconds = {}
    for name, extra, folder in runs:
        shutil.rmtree(ROOT / folder, ignore_errors=True)
        seconds[name] = timed_fit(extra)
        after = load_components(str(ROOT / folder / "export"))
        results[name] = scores_at_each_guidance(after)
        if name == runs[0][0]:
            before_after_grid(base, after, args.grid)
    quickstarts = [name for name, _, _ in runs[:len(args.seeds)]]
    if len(quickstarts) > 1:  # the mean right after the seeds it averages
        mean = {f"quickstart (LoRA), mean of {len(quickstarts)} seeds": mean_scores([results[n] for n in quickstarts])}
        results = {name: results[name] for name in ["base", *quickstarts]} | mean | {
            name: value for name, value in results.items() if name not in quickstarts and name != "base"}
    lines = [f"`python scripts/toy_benchmark.py` on {datetime.date.today()}, torch {torch.__version__}, "
             f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}, load average "
             f"{load_at_start:.1f} at the start), "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}. Accuracies: share of the attributes "
             "each prompt names that the image shows (`ToyWorldScore`), 32 held-out prompts per world, seed 0, "
             f"12 steps, guidance {GUIDANCES[0]:g} (the pipeline's) and {GUIDANCES[1]:g} (the quickstart's "
             "validation).", "",
             f"- VQ: {vq:.2%} of cells of 64 held-out images reconstructed to the right palette colour.",
             *[f"- `{name}` fit command: {value:.0f} s wall time (start-up, training, validation, export)."
               for name, value in seconds.items()], "",
             "| model | guidance | base world, all attributes | held-back concept (teal, crown) | held-back "
             "prompts, all attributes |", "|---|---|---|---|---|",
             *rows("`toy` base", results.pop("base")),
             *[line for name, s in results.items() for line in rows(f"after {name}", s)]]
    publish(lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

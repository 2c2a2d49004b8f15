"""Measure the `toy` base model and the quickstart against issue 19's targets; write a section into BENCHMARKS.md.

    python scripts/toy_benchmark.py [--skip-full] [--seeds 0 1 2] [--grid docs/quickstart-before-after.png]

Every image is read strictly (`ToyWorldScore`: each of its 16x16 cells against the ideal drawing of its prompt, the
head colour free; an image is clean with at least 98% of its cells right): 32 held-out prompts per world, 2 images
each, at the pipeline's defaults (guidance 10, 12 steps) and at the quickstart's validation settings. Also the VQ's
codes, the context probe (a head's lower rows with the rest of the image revealed) and, per world, how many of the
held-back attributes the prompts name are drawn. The quickstart runs once per seed in --seeds (mean and worst seed
reported), the full finetune of the same data once.
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

import torch
import yaml
from PIL import Image
from toy_probes import context_probe, vq_code_accuracy

from amused_lightning.callbacks.validation_images import image_grid
from amused_lightning.model.amused import AmusedModel
from amused_lightning.model.decoding import GenerationSettings
from amused_lightning.toy.image_metrics import ToyWorldScore
from amused_lightning.toy.world import evaluation_characters

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_DATA = ["scripts/make_toy_dataset.py", "data/toy-teal-crown", "--world", "finetune", "--num-images",
                   "72", "--prior-images", "72", "--size", "64"]
QUICKSTART_FIT = ["-m", "amused_lightning", "fit", "--config", "configs/quickstart.yaml",
                  "--trainer.enable_progress_bar", "false"]
FULL_FINETUNE = ["--model.lora", "null", "--export.merge_lora", "false", "--model.optimizer.init_args.lr", "3e-4",
                 "--trainer.default_root_dir", "runs/quickstart-full"]
SECTION = "## Toy world (issue 19)"
QUICKSTART_CONFIG = yaml.safe_load((ROOT / "configs/quickstart.yaml").read_text())
SETTINGS = {"defaults": GenerationSettings(),
            "quickstart": GenerationSettings(**QUICKSTART_CONFIG["model"]["validation"].get("generation", {}))}
IMAGES_PER_PROMPT = 2


def settings_name(name: str) -> str:
    """How a row names its sampling settings."""
    settings = SETTINGS[name]
    return f"{name} (guidance {settings.guidance_scale:g}, {settings.num_inference_steps} steps)"


def draw(model: AmusedModel, prompts: list[str], settings: GenerationSettings, seed: int = 0) -> list[Image.Image]:
    """Images of `prompts` (in one batch, from one seed)."""
    return model.generate(prompts, settings, seed)


def world_scores(model: AmusedModel, settings: GenerationSettings) -> dict[str, dict[str, float]]:
    """ToyWorldScore of 2 images of each held-out prompt, of the base world and of the held-back concept."""
    scores = {}
    for world in ("base", "finetune"):
        prompts = [c.caption() for c in evaluation_characters(world) for _ in range(IMAGES_PER_PROMPT)]
        scores[world] = ToyWorldScore()(prompts, draw(model, prompts, settings))
    return scores


def all_scores(model: AmusedModel) -> dict[str, dict[str, dict[str, float]]]:
    """`world_scores` at each of SETTINGS (once where two are the same)."""
    unique = {name: settings for name, settings in SETTINGS.items() if settings not in
              [SETTINGS[other] for other in list(SETTINGS)[:list(SETTINGS).index(name)]]}
    return {name: world_scores(model, settings) for name, settings in unique.items()}


def timed_fit(extra: list[str]) -> float:
    """Seconds the quickstart's fit command takes, run as a user would run it."""
    started = time.perf_counter()
    subprocess.run([sys.executable, *QUICKSTART_FIT, *extra], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def before_after_grid(before: AmusedModel, after: AmusedModel, path: Path) -> None:
    """The quickstart's validation prompts drawn with its validation settings before (top row) and after (bottom row)
    finetuning, each image enlarged 4 times (nearest neighbour: the cells stay sharp)."""
    prompts = QUICKSTART_CONFIG["model"]["validation"]["prompts"]
    images = draw(before, prompts, SETTINGS["quickstart"]) + draw(after, prompts, SETTINGS["quickstart"])
    enlarged = [image.resize((4 * image.width, 4 * image.height), Image.Resampling.NEAREST) for image in images]
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(enlarged, columns=len(prompts)).save(path, optimize=True)


def row(name: str, settings: str, scores: dict[str, dict[str, float]]) -> str:
    """A table row: strict base-world figures, strict held-back-prompt figures, held-back attributes drawn."""
    base, held = scores["base"], scores["finetune"]
    return (f"| {name} | {settings_name(settings)} | {base['toy_cells']:.1%} | {base['toy_clean']:.1%} | "
            f"{base['toy_cells_head']:.1%} | {held['toy_cells']:.1%} | {held['toy_clean']:.1%} | "
            f"{held['toy_held_back']:.1%} |")


def summary(name: str, runs: list[dict], settings: str) -> str:
    """A row of the mean over runs, with the worst run's figure of each column in brackets."""
    def cell(world: str, key: str) -> str:
        values = [run[settings][world][key] for run in runs]
        return f"{sum(values) / len(values):.1%} ({min(values):.1%})"

    return (f"| {name} | {settings_name(settings)} | {cell('base', 'toy_cells')} | {cell('base', 'toy_clean')} | "
            f"{cell('base', 'toy_cells_head')} | {cell('finetune', 'toy_cells')} | {cell('finetune', 'toy_clean')} | "
            f"{cell('finetune', 'toy_held_back')} |")


def publish(lines: list[str], section: str = SECTION) -> None:
    """Replace (or add) a script's section of BENCHMARKS.md (this script's by default)."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    head = text.split(section)[0].rstrip() + "\n\n"
    rest = text.split(section)[1] if section in text else ""
    tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
    path.write_text(head + "\n".join([section, "", *lines]) + "\n" + tail)


def fit_runs(seeds: list[int], full: bool) -> list[tuple[str, list[str], str]]:
    """(name, extra arguments, run folder) of each quickstart seed, and of the full finetune."""
    runs = [(f"quickstart, seed {seed}", ["--seed_everything", str(seed), "--trainer.default_root_dir",
                                          f"runs/quickstart-seed{seed}"], f"runs/quickstart-seed{seed}")
            for seed in seeds]
    return runs + ([("full finetune, seed 0", FULL_FINETUNE, "runs/quickstart-full")] if full else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-full", action="store_true", help="skip the full-finetune run")
    parser.add_argument("--grid", type=Path, default=ROOT / "docs" / "quickstart-before-after.png")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds of the quickstart")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    base = AmusedModel.from_pretrained("toy")
    results, seconds = {"`toy` base": all_scores(base)}, {}
    subprocess.run([sys.executable, *QUICKSTART_DATA], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    for name, extra, folder in fit_runs(args.seeds, not args.skip_full):
        shutil.rmtree(ROOT / folder, ignore_errors=True)
        seconds[name] = timed_fit(extra)
        after = AmusedModel.from_pretrained(str(ROOT / folder / "export"))
        results[f"after {name}"] = all_scores(after)
        if extra[1:2] == [str(args.seeds[0])] and "seed" in name:
            before_after_grid(base, after, args.grid)
    quickstarts = [results[f"after {name}"] for name, _, _ in fit_runs(args.seeds, False)]
    codes, decoded = vq_code_accuracy(base.vqvae)
    probe = context_probe(base)
    table = ["| model | sampling | base world: cells right | base: clean images | base: head cells right | "
             "held-back prompts: cells right | held-back: clean images | held-back attributes drawn |",
             "|---|---|---|---|---|---|---|---|"]
    for name, scores in results.items():
        table += [row(name, settings, world) for settings, world in scores.items()]
    table += [summary(f"quickstart, mean of {len(quickstarts)} seeds (worst)", quickstarts, settings)
              for settings in quickstarts[0]]
    lines = [f"`python scripts/toy_benchmark.py` on {datetime.date.today()}, torch {torch.__version__}, "
             f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}, load average "
             f"{load_at_start:.1f} at the start), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}. "
             f"32 held-out prompts per world, {IMAGES_PER_PROMPT} images each, seed 0. Cells right: against the "
             "ideal drawing of the prompt (head colour free); clean: at least 98% of an image's cells right.", "",
             f"- VQ: {codes:.2%} of the cells of held-out images encoded to their colour's code; {decoded:.2%} of "
             "codes decoded to a cell of their colour.",
             f"- Context probe (held-out base-world characters, the head's two lower rows masked): the true colour "
             f"gets {probe['revealed']:.1%} of the probability with the rest of the image revealed, "
             f"{probe['masked']:.1%} with everything masked.",
             *[f"- `{name}` fit command: {value:.0f} s wall time (start-up, training, validation, export)."
               for name, value in seconds.items()], "", *table]
    publish(lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

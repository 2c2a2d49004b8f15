"""Image metrics for validation: callables (prompts, images) -> named scores averaged over the prompts.

    model:
      image_metrics:
        - class_path: amused_lightning.toy.image_metrics.ToyWorldScore
        - class_path: amused_lightning.toy.image_metrics.ClipScore
          init_args: {model_name_or_path: /models/clip-vit-base-patch16}
"""

from __future__ import annotations

import os
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from amused_lightning.toy.cell_score import CLEAN, cells_right, part_shares, read_cells
from amused_lightning.toy.world import (
    BODY_BOX,
    GLASSES_LEFTS,
    GRID,
    HEADS,
    PARTS,
    Character,
    draw_head,
    held_back_attributes,
    palette_index,
    parse_caption,
)

ATTRIBUTES = ("glasses", "body", "background", "head")
HEAD_BOX = (4, 2, 12, 8)  # cells: left, top, right, bottom (exclusive)
GLASSES_CELLS = {(row, col) for left in GLASSES_LEFTS for col in (left, left + 1) for row in (4, 5)}
BODY_CELLS = [(row, col) for row in range(BODY_BOX[1] + 1, BODY_BOX[3]) for col in range(BODY_BOX[0] + 1,
                                                                                        BODY_BOX[2] - 1)]
BACKGROUND_CELLS = [(row, col) for row in range(GRID) for col in range(GRID) if row < 2 or col < 3 or col > 12]


class ImageMetric:
    """Scores generated images against their prompts: a dict of named scores, each averaged over the prompts."""

    def __call__(self, prompts: list[str], images: list[Image.Image]) -> dict[str, float]:
        raise NotImplementedError


def evaluate_image_metrics(metrics: list[ImageMetric], prompts: list[str], images: list[Image.Image]
                           ) -> dict[str, float]:
    """Every metric's scores as `val/<name>`."""
    scores = {}
    for metric in metrics:
        scores.update({f"val/{name}": float(value) for name, value in metric(prompts, images).items()})
    return scores


def majority(cells: np.ndarray, where: list[tuple[int, int]]) -> int:
    """The most frequent palette index over the cells `where`."""
    return Counter(int(cells[row, col]) for row, col in where).most_common(1)[0][0]


@lru_cache(maxsize=1)
def head_templates() -> dict[str, tuple[frozenset, frozenset]]:
    """Per shape, the head cells (glasses excluded) it surely covers and surely leaves free; edge cells are neither."""
    templates = {}
    for shape in HEADS:
        canvas = Image.new("L", (64, 64), 0)
        draw_head(ImageDraw.Draw(canvas), shape, 255, 4)
        coverage = np.asarray(canvas, dtype=np.float32).reshape(GRID, 4, GRID, 4)[:, 1:3, :, 1:3].mean((1, 3)) / 255
        templates[shape] = (frozenset(c for c in head_cells() if coverage[c] > 0.75),
                            frozenset(c for c in head_cells() if coverage[c] < 0.25))
    return templates


def head_cells() -> list[tuple[int, int]]:
    """Cells of the head's box that glasses never cover."""
    left, top, right, bottom = HEAD_BOX
    return [(row, col) for row in range(top, bottom) for col in range(left, right) if (row, col) not in GLASSES_CELLS]


def read_head_shapes(cells: np.ndarray, background: int) -> set[str]:
    """The head shapes whose silhouette is nearest the non-background cells of the head box (equal ones tie)."""
    drawn = {cell for cell in head_cells() if cells[cell] != background}
    distances = {shape: len(inside - drawn) + len(outside & drawn)
                 for shape, (inside, outside) in head_templates().items()}
    return {shape for shape, distance in distances.items() if distance == min(distances.values())}


def read_attributes(character: Character, image: Image.Image) -> dict[str, bool]:
    """Whether the image shows each attribute the caption names."""
    cells = read_cells(image)
    background = majority(cells, BACKGROUND_CELLS)
    return {
        "glasses": majority(cells, sorted(GLASSES_CELLS)) == palette_index("color", character.glasses),
        "body": majority(cells, BODY_CELLS) == palette_index("color", character.body),
        "background": background == palette_index("background", character.background),
        "head": character.head in read_head_shapes(cells, background),
    }


def strict_scores(characters: list[Character], images: list[Image.Image]) -> dict[str, float]:
    """Cells right against the ideal drawing and clean images (>= CLEAN of their cells right), over all images, per
    part, and apart for the prompts that name the held-back concept and those that do not."""
    shares = [part_shares(*cells_right(character, image)) for character, image in zip(characters, images)]
    groups = {"": shares,
              "_held_back": [s for s, c in zip(shares, characters) if held_back_attributes(c)],
              "_known": [s for s, c in zip(shares, characters) if not held_back_attributes(c)]}
    scores = {}
    for suffix, members in groups.items():
        for key in ("cells", *PARTS) if not suffix else ("cells",):
            if members:
                name = "" if key == "cells" else f"_{key}"
                scores[f"toy_cells{name}{suffix}"] = float(np.mean([s[key] for s in members]))
                scores[f"toy_clean{name}{suffix}"] = float(np.mean([s[key] >= CLEAN for s in members]))
    return scores


class ToyWorldScore(ImageMetric):
    """Scores toy-world images strictly, cell by cell against the ideal drawing of each prompt (`toy_cells`,
    `toy_clean`, per part and for the held-back concept apart), and by the attributes each prompt names
    (`toy_accuracy`, per attribute, held-back and known)."""

    def __call__(self, prompts: list[str], images: list[Image.Image]) -> dict[str, float]:
        characters = [parse_caption(prompt) for prompt in prompts]
        hits: dict[str, list[bool]] = {name: [] for name in (*ATTRIBUTES, "held_back", "known")}
        for character, image in zip(characters, images, strict=True):
            held_back = held_back_attributes(character)
            for name, hit in read_attributes(character, image).items():
                hits[name].append(hit)
                hits["held_back" if name in held_back else "known"].append(hit)
        scores = strict_scores(characters, images)
        scores.update({f"toy_{name}": float(np.mean(values)) for name, values in hits.items() if values})
        scores["toy_accuracy"] = float(np.mean([hit for name in ATTRIBUTES for hit in hits[name]]))
        return scores


class ClipScore(ImageMetric):
    """torchmetrics' CLIPScore (image-prompt cosine similarity x 100) with the CLIP model of a hub id or folder."""

    def __init__(self, model_name_or_path: str = "openai/clip-vit-base-patch16"):
        check_clip_source(model_name_or_path)
        from torchmetrics.multimodal.clip_score import CLIPScore

        self.metric = CLIPScore(model_name_or_path=model_name_or_path)

    @torch.no_grad()
    def __call__(self, prompts: list[str], images: list[Image.Image]) -> dict[str, float]:
        pixels = [torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1) for image in images]
        self.metric.reset()
        return {"clip_score": float(self.metric(pixels, prompts))}


def check_clip_source(model_name_or_path: str) -> None:
    """Fail before training when the CLIP weights cannot be had: no such folder, or offline without a cached copy."""
    setting = f"ClipScore model_name_or_path={model_name_or_path!r}"
    path = Path(model_name_or_path).expanduser()
    if path.exists() or model_name_or_path.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise ValueError(f"{setting}: not a folder holding a CLIP model (no config.json)")
        return
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model_name_or_path, "config.json"), str):
            raise ValueError(f"{setting}: the Hugging Face Hub is offline (HF_HUB_OFFLINE) and no copy is cached; "
                             f"download it elsewhere and pass its local folder")


def palette_cell_agreement(original: Image.Image, reconstruction: Image.Image) -> float:
    """The share of cells whose nearest palette colour is the same in both images (VQ reconstruction quality)."""
    return float((read_cells(original) == read_cells(reconstruction)).mean())

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

from amused_lightning.toy.world import (
    BACKGROUNDS,
    BODY_BOX,
    COLORS,
    GLASSES_LEFTS,
    GRID,
    HEADS,
    Character,
    draw_head,
    held_back_attributes,
    parse_caption,
)

ATTRIBUTES = ("glasses", "body", "background", "head")
PALETTE = [("color", name, rgb) for name, rgb in COLORS.items()] + [
    ("background", name, rgb) for name, rgb in BACKGROUNDS.items()]
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


def cell_palette_classes(image: Image.Image) -> list[list[tuple[str, str]]]:
    """The nearest palette entry (kind, name) of each of the 16x16 cells, read from the cell's central pixels."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    if pixels.shape[0] != pixels.shape[1] or pixels.shape[0] % GRID:
        raise ValueError(f"image size {image.size} must be square and a multiple of {GRID} pixels")
    cell = pixels.shape[0] // GRID
    inner = slice(cell // 4, cell - cell // 4)
    centres = pixels.reshape(GRID, cell, GRID, cell, 3)[:, inner, :, inner].mean(axis=(1, 3))
    colours = np.array([rgb for _, _, rgb in PALETTE], dtype=np.float32)
    nearest = ((centres[:, :, None, :] - colours) ** 2).sum(-1).argmin(-1)
    return [[PALETTE[i][:2] for i in row] for row in nearest]


def majority(classes: list[list[tuple[str, str]]], cells: list[tuple[int, int]]) -> tuple[str, str]:
    """The most frequent class over `cells`."""
    return Counter(classes[row][col] for row, col in cells).most_common(1)[0][0]


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


def read_head_shapes(classes: list[list[tuple[str, str]]], background: tuple[str, str]) -> set[str]:
    """The head shapes whose silhouette is nearest the non-background cells of the head box (equal ones tie)."""
    drawn = {cell for cell in head_cells() if classes[cell[0]][cell[1]] != background}
    distances = {shape: len(inside - drawn) + len(outside & drawn)
                 for shape, (inside, outside) in head_templates().items()}
    return {shape for shape, distance in distances.items() if distance == min(distances.values())}


def read_attributes(character: Character, image: Image.Image) -> dict[str, bool]:
    """Whether the image shows each attribute the caption names."""
    classes = cell_palette_classes(image)
    background = majority(classes, BACKGROUND_CELLS)
    return {
        "glasses": majority(classes, sorted(GLASSES_CELLS)) == ("color", character.glasses),
        "body": majority(classes, BODY_CELLS) == ("color", character.body),
        "background": background == ("background", character.background),
        "head": character.head in read_head_shapes(classes, background),
    }


class ToyWorldScore(ImageMetric):
    """Reads back every attribute a toy-world prompt names: per-attribute accuracy, overall, held-back and known."""

    def __call__(self, prompts: list[str], images: list[Image.Image]) -> dict[str, float]:
        hits: dict[str, list[bool]] = {name: [] for name in (*ATTRIBUTES, "held_back", "known")}
        for prompt, image in zip(prompts, images, strict=True):
            character = parse_caption(prompt)
            held_back = held_back_attributes(character)
            for name, hit in read_attributes(character, image).items():
                hits[name].append(hit)
                hits["held_back" if name in held_back else "known"].append(hit)
        scores = {f"toy_{name}": float(np.mean(values)) for name, values in hits.items() if values}
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
    first, second = cell_palette_classes(original), cell_palette_classes(reconstruction)
    return float(np.mean([a == b for row_a, row_b in zip(first, second) for a, b in zip(row_a, row_b)]))

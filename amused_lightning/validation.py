"""Pieces of validation: fixed held-out masks, image grids, and the images a validation made."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from amused_lightning.masking import random_token_mask
from amused_lightning.seeding import derive_seed


def held_out_mask(positions: torch.Tensor, seq_len: int, ratio: float, ratio_index: int, seed: int) -> torch.Tensor:
    """(B, L) masks fixed by (seed, sample position, ratio): the same at every evaluation."""
    masks = []
    for position in positions.tolist():
        generator = torch.Generator().manual_seed(derive_seed(seed, position, ratio_index))
        masks.append(random_token_mask(torch.tensor([ratio]), seq_len, generator))
    return torch.cat(masks).to(positions.device)


def held_out_scores(ratios: list[float], losses: list, accuracies: list) -> dict[str, torch.Tensor]:
    """val/loss and val/accuracy per mask ratio (token-weighted) and their means over ratios, and val/context_gain:
    how much more often a token is predicted right with the fewest tokens masked than with the most; resets the
    metrics."""
    scores = {}
    for ratio, loss, accuracy in zip(ratios, losses, accuracies):
        scores[f"val/loss_mask{round(ratio * 100)}"] = loss.compute()
        scores[f"val/accuracy_mask{round(ratio * 100)}"] = accuracy.compute()
        loss.reset()
        accuracy.reset()
    scores["val/loss"] = torch.stack([v for k, v in scores.items() if "/loss_" in k]).mean()
    scores["val/accuracy"] = torch.stack([v for k, v in scores.items() if "/accuracy_" in k]).mean()
    if len(set(ratios)) > 1:
        fewest, most = round(min(ratios) * 100), round(max(ratios) * 100)
        scores["val/context_gain"] = scores[f"val/accuracy_mask{fewest}"] - scores[f"val/accuracy_mask{most}"]
    return scores


def context_warning(gain: float, step: int) -> str | None:
    """What to tell a user whose model predicts no better when shown more of the image, after it trained a while."""
    if step == 0 or gain > 0:
        return None
    return (f"val/context_gain is {gain:+.3f} at step {step}: the model predicts masked tokens no better when shown "
            f"more of the image, so it draws from the prompt alone and its images come out incoherent")


def image_grid(images: list[Image.Image], columns: int = 4) -> Image.Image:
    """Images tiled left to right, top to bottom."""
    width, height = images[0].size
    columns = min(columns, len(images))
    grid = Image.new("RGB", (columns * width, math.ceil(len(images) / columns) * height))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


def save_validation_images(folder: Path, step: int, prompts: list[str], images: list[Image.Image]) -> Path:
    """Write the step's grid as validation/step=NNNNNN.png, with prompts.txt giving the reading order."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.txt").write_text("".join(f"{i}: {prompt}\n" for i, prompt in enumerate(prompts)))
    path = folder / f"step={step:06d}.png"
    image_grid(images).save(path)
    return path


@dataclass(frozen=True)
class ValidationImages:
    """What a validation drew: the optimizer step, the prompts, one image per prompt, and the grid saved on disk."""

    step: int
    prompts: list[str]
    images: list[Image.Image]
    grid: Path

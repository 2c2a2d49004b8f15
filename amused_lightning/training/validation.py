"""The held-out scores of a validation: fixed masks, and the loss and accuracy per mask ratio."""

from __future__ import annotations

import torch

from amused_lightning.seeding import derive_seed
from amused_lightning.training.masking import random_token_mask


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

"""The masked-token objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from amused_lightning.training.masking import IGNORE_INDEX


def masked_token_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of (B, C, H, W) logits against (B, H, W) labels (or (M, C) against (M,)), averaged over the
    masked tokens only, optionally against labels smoothed towards uniform."""
    # Under autocast cross_entropy already runs in fp32; an explicit upcast would only add a second logits copy.
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="mean",
                           label_smoothing=label_smoothing)


def masked_token_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per masked token: its cross-entropy and whether the arg-max prediction is right (both 1-D, fp32)."""
    masked = labels != IGNORE_INDEX
    losses = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")[masked]
    hits = (logits.argmax(dim=1)[masked] == labels[masked]).float()
    return losses, hits

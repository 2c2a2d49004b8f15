"""The masked-token objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from amused_lightning.training.masking import IGNORE_INDEX


def masked_token_loss(logits: torch.Tensor, labels: torch.Tensor,
                      label_smoothing: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Cross-entropy of (B, C, H, W) logits against (B, H, W) labels (or (M, C) against (M,)), averaged over the
    masked tokens only, optionally against labels smoothed towards uniform: by one share for all, or by one share
    per sample (a (B,) tensor; (M,) for (M,) labels)."""
    if not torch.is_tensor(label_smoothing):
        # Under autocast cross_entropy already runs in fp32; an explicit upcast would only add a second logits copy.
        return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="mean",
                               label_smoothing=label_smoothing)
    log_probs = logits.float().log_softmax(dim=1)
    masked = labels != IGNORE_INDEX
    true = -log_probs.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
    share = label_smoothing.view(-1, *[1] * (labels.dim() - 1)).to(log_probs.dtype)
    # F.cross_entropy's smoothing: (1 - share) of the true code's loss plus share of the mean over all codes.
    smoothed = (1 - share) * true - share * log_probs.mean(dim=1)
    return smoothed[masked].mean()


def masked_token_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per masked token: its cross-entropy and whether the arg-max prediction is right (both 1-D, fp32)."""
    masked = labels != IGNORE_INDEX
    losses = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")[masked]
    hits = (logits.argmax(dim=1)[masked] == labels[masked]).float()
    return losses, hits

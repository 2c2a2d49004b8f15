import math

import torch

from amused_lightning.training.loss import masked_token_loss, masked_token_scores
from amused_lightning.training.masking import IGNORE_INDEX


def reference_loss(logits, labels):
    """Straightforward mean of -log softmax over the masked positions."""
    total, count = 0.0, 0
    batch, codes, height, width = logits.shape
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                label = int(labels[b, y, x])
                if label == IGNORE_INDEX:
                    continue
                column = logits[b, :, y, x].double()
                total += -(column[label] - torch.logsumexp(column, 0)).item()
                count += 1
    return total / count


def test_loss_matches_direct_computation():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 10, 4, 5, generator=generator)
    labels = torch.randint(0, 10, (3, 4, 5), generator=generator)
    labels[torch.rand(3, 4, 5, generator=generator) < 0.6] = IGNORE_INDEX
    assert math.isclose(masked_token_loss(logits, labels).item(), reference_loss(logits, labels), rel_tol=1e-5)


def test_loss_ignores_unmasked_logits():
    logits = torch.zeros(1, 4, 1, 2)
    labels = torch.tensor([[[2, IGNORE_INDEX]]])
    base = masked_token_loss(logits, labels)
    logits[0, :, 0, 1] = torch.tensor([50.0, -50.0, 3.0, 9.0])
    assert masked_token_loss(logits, labels) == base == torch.log(torch.tensor(4.0))


def test_scores_cover_masked_positions_only():
    logits = torch.zeros(1, 3, 1, 3)
    logits[0, 1, 0, 0] = 1  # predicts 1, label 1: right
    logits[0, 2, 0, 1] = 1  # predicts 2, label 0: wrong
    labels = torch.tensor([[[1, 0, IGNORE_INDEX]]])
    losses, hits = masked_token_scores(logits, labels)
    assert hits.tolist() == [1.0, 0.0]
    assert torch.allclose(losses.mean(), masked_token_loss(logits, labels))


def test_a_smoothing_share_per_sample_equals_the_shared_one_sample_by_sample():
    logits, labels = torch.randn(3, 5, 4, 4), torch.randint(0, 5, (3, 4, 4))
    labels[0, 0] = IGNORE_INDEX
    shares = torch.tensor([0.0, 0.1, 0.3])
    mixed = masked_token_loss(logits, labels, shares)
    counts = (labels != IGNORE_INDEX).sum(dim=(1, 2)).float()
    alone = torch.stack([masked_token_loss(logits[i:i + 1], labels[i:i + 1], float(s)) for i, s in enumerate(shares)])
    assert torch.allclose(mixed, (alone * counts).sum() / counts.sum(), atol=1e-6)


def test_a_smoothing_share_per_token_of_masked_only_logits():
    logits, labels = torch.randn(6, 5), torch.randint(0, 5, (6,))
    shares = torch.tensor([0.0, 0.0, 0.2, 0.2, 0.2, 0.0])
    expected = (masked_token_loss(logits[shares == 0], labels[shares == 0]) * 3
                + masked_token_loss(logits[shares > 0], labels[shares > 0], 0.2) * 3) / 6
    assert torch.allclose(masked_token_loss(logits, labels, shares), expected, atol=1e-6)

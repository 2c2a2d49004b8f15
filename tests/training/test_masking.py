import math

import pytest
import torch

from amused_lightning.training.masking import (
    IGNORE_INDEX,
    apply_mask,
    cosine_mask_ratio,
    masked_token_counts,
    random_token_mask,
    sample_mask_ratios,
)


def test_cosine_schedule_endpoints():
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(cosine_mask_ratio(t), torch.tensor([1.0, math.cos(math.pi / 4), 0.0]), atol=1e-7)


def test_ratios_are_floored_at_min_masking_rate():
    ratios = sample_mask_ratios(4096, 0.3, torch.Generator().manual_seed(0))
    assert ratios.min() >= 0.3 and ratios.max() <= 1.0
    assert (ratios == 0.3).any(), "t close to 1 gives ratios under the floor, which must be clamped to it"


@pytest.mark.parametrize("seq_len", [1, 7, 256, 1024])
def test_mask_has_exactly_round_count_tokens(seq_len):
    ratios = torch.tensor([0.0, 0.001, 0.25, 0.5, 0.73, 1.0])
    mask = random_token_mask(ratios, seq_len, torch.Generator().manual_seed(1))
    expected = [max(1, round(seq_len * r)) for r in ratios.tolist()]
    assert mask.sum(dim=1).tolist() == expected
    assert masked_token_counts(ratios, seq_len).tolist() == expected


def test_mask_positions_are_uniform():
    ratios = torch.full((20000,), 0.25)
    mask = random_token_mask(ratios, 16, torch.Generator().manual_seed(2))
    frequency = mask.float().mean(dim=0)
    assert torch.allclose(frequency, torch.full((16,), 0.25), atol=0.015)


def test_apply_mask_sets_inputs_and_labels():
    tokens = torch.tensor([[[3, 4], [5, 6]]])
    mask = torch.tensor([[[True, False], [False, True]]])
    inputs, labels = apply_mask(tokens, mask, mask_id=99)
    assert inputs.tolist() == [[[99, 4], [5, 99]]]
    assert labels.tolist() == [[[3, IGNORE_INDEX], [IGNORE_INDEX, 6]]]

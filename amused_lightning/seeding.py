"""Seeds derived from several integers, so every random draw can be reproduced from where it happens."""

from __future__ import annotations

import numpy as np


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on all of `keys` (and on their order)."""
    return int(np.random.SeedSequence([int(key) for key in keys]).generate_state(2, np.uint64)[0] >> 1)


def micro_batch_slot(micro_batch: int, rank: int, world_size: int) -> int:
    """The place of a process's micro-batch among all micro-batches of its optimizer step: the place its batch
    has in the epoch's order (see `data.sampler.global_place`), so N processes and one accumulating N agree."""
    return micro_batch * world_size + rank

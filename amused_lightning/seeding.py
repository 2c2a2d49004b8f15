"""Seeds derived from several integers, so every random draw can be reproduced from where it happens."""

from __future__ import annotations

import numpy as np


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on all of `keys` (and on their order)."""
    return int(np.random.SeedSequence([int(key) for key in keys]).generate_state(2, np.uint64)[0] >> 1)

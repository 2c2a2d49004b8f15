"""Shared CPU fixtures: tiny components and small generated datasets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
# Commands choose their CPU threads by the machine's load unless this is set: tests keep one count throughout.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from amused_lightning.model.components import load_components  # noqa: E402

from make_toy_dataset import build  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """Random-weight `tiny` components (treat as read-only)."""
    return load_components("tiny", seed=0)


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> Path:
    """A 12-image nouns-like parquet dataset at 80 px (larger than the 64 px training crops)."""
    folder = tmp_path_factory.mktemp("toy-nouns")
    build(folder, num_images=12, size=80, seed=1)
    return folder


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Pre-encoded caches go to a folder of this test session, never to the user's."""
    folder = tmp_path_factory.mktemp("amused-cache")
    previous = os.environ.get("AMUSED_LIGHTNING_CACHE")
    os.environ["AMUSED_LIGHTNING_CACHE"] = str(folder)
    yield folder
    if previous is None:
        del os.environ["AMUSED_LIGHTNING_CACHE"]
    else:
        os.environ["AMUSED_LIGHTNING_CACHE"] = previous

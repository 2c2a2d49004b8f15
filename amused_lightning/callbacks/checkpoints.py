"""The run's checkpoints: Lightning's ModelCheckpoint, which keeps writing `last.ckpt` (never `last-v1.ckpt`) in a
run folder that was copied or moved since its checkpoint was written."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

# The entries of ModelCheckpoint's state that name checkpoint files.
PATH_ENTRIES = ("best_model_path", "kth_best_model_path", "last_model_path")


def moved(path: str, old_dir: str, new_dir: str) -> str:
    """`path` in `new_dir` when it lay directly in `old_dir`; other paths (and "") as they are."""
    if path and os.path.dirname(path) == old_dir:
        return os.path.join(new_dir, os.path.basename(path))
    return path


def relocated(state: dict[str, Any], dirpath: str) -> dict[str, Any]:
    """ModelCheckpoint's saved state with the files of its old folder named in `dirpath`, the folder it now has."""
    old_dir = state.get("dirpath")
    if not old_dir or old_dir == dirpath:
        return state
    state = {**state, "dirpath": dirpath}
    for entry in PATH_ENTRIES:
        if isinstance(state.get(entry), str):
            state[entry] = moved(state[entry], old_dir, dirpath)
    if isinstance(state.get("best_k_models"), dict):
        state["best_k_models"] = {moved(path, old_dir, dirpath): score
                                  for path, score in state["best_k_models"].items()}
    return state


class RunCheckpoints(ModelCheckpoint):
    """ModelCheckpoint that follows its run folder: the saved state names files by absolute path, and Lightning
    drops it all when the folder changed, so it would take `last.ckpt` for someone else's file and write
    `last-v1.ckpt` beside it. Here the paths are moved to the folder the run now lives in."""

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key, so checkpoints written before this class existed resume as they did.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(relocated(state_dict, self.dirpath) if self.dirpath else state_dict)

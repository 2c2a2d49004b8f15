"""Files we write get the permissions the user's umask gives new files (some writers, safetensors among them, create
theirs readable by the owner alone)."""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process's umask (reading it means setting it: it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(*paths: Path) -> None:
    """Give each file, and each file under each folder, the mode a new file gets from the umask (0644 under 022)."""
    mode = 0o666 & ~current_umask()
    for path in paths:
        for file in (path.rglob("*") if path.is_dir() else [path]):
            if file.is_file() and not file.is_symlink():
                file.chmod(mode)

"""One live `fit` per run folder: an exclusive flock on <default_root_dir>/run.lock. The operating system releases
it when the process ends however it ends (kill -9 included), so a crashed run never leaves the folder locked."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import TextIO

from amused_lightning.errors import FolderInUseError
from amused_lightning.run.folder import RunFolder

# Set in the other processes of a multi-process run (Lightning's launcher, torchrun, SLURM): only rank 0 locks.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def is_first_process() -> bool:
    """Whether this process is rank 0 of its run (or runs alone), from the launchers' environment variables."""
    return all(int(os.environ.get(name) or 0) == 0 for name in RANK_VARIABLES)


def holder_line() -> str:
    """Who holds the lock, as the lock file says it: pid, host and start time."""
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"pid {os.getpid()} on {socket.gethostname()}, started {started}"


class RunLock:
    """The held lock of a run folder; `release` lets the next run in."""

    def __init__(self, handle: TextIO):
        self._handle = handle

    def release(self) -> None:
        """Unlock (closing the file drops the flock)."""
        self._handle.close()


def lock_run_folder(root: str | Path) -> RunLock:
    """Hold `root` for this process, or fail at once naming the process that holds it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    handle = open(RunFolder(root).lock, "a+")  # held open for the whole run: the flock lives with it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that is just starting"
        handle.close()
        raise FolderInUseError(f"trainer.default_root_dir={str(root)!r} is in use by a live run ({holder}): wait "
                               "for it to end or stop it, or choose another trainer.default_root_dir") from None
    handle.truncate(0)
    handle.write(holder_line() + "\n")
    handle.flush()
    return RunLock(handle)

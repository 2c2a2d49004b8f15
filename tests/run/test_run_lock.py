"""One live `fit` per run folder: a second run fails at once naming the holder; a killed run leaves it usable."""

import os
import signal
import time

import pytest

from amused_lightning.errors import FolderInUseError
from amused_lightning.run.lock import lock_run_folder

from helpers import COMMON, STEPS, fit, start_fit


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    held = lock_run_folder(tmp_path)
    with pytest.raises(FolderInUseError, match=rf"in use by a live run \(pid {os.getpid()} on "):
        lock_run_folder(tmp_path)
    held.release()
    lock_run_folder(tmp_path).release()


def test_two_runs_at_once_then_kill_9_leaves_the_folder_usable(tmp_path, toy_dataset):
    runs = [start_fit(tmp_path, toy_dataset), start_fit(tmp_path, toy_dataset)]
    while all(run.poll() is None for run in runs):
        time.sleep(0.02)
    loser, winner = sorted(runs, key=lambda run: run.poll() is None)
    err = loser.communicate()[1].strip().splitlines()
    assert loser.returncode == 2, err
    assert err[-1] == (f"error: trainer.default_root_dir={str(tmp_path)!r} is in use by a live run "
                       f"(pid {winner.pid} on {os.uname().nodename}, started {err[-1].split('started ')[1]}"), err
    assert winner.poll() is None, "the second run failed before the first finished"
    while not (tmp_path / "checkpoints" / "step=1.ckpt").exists() and winner.poll() is None:
        time.sleep(0.02)
    os.killpg(winner.pid, signal.SIGKILL)
    winner.wait(timeout=60)
    assert fit(tmp_path, toy_dataset, *COMMON, "--ckpt_path", "last").trainer.global_step == int(STEPS)

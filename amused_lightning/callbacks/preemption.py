"""SIGTERM (SLURM, Kubernetes, spot instances) and SIGINT (Ctrl-C): finish the optimizer step in progress, save
`last.ckpt` at it, and stop with exit code 128 + the signal's number. A second signal stops at once."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Checkpoint

from amused_lightning.errors import Preempted

log = logging.getLogger(__name__)


def signal_exit_code(signum: int) -> int:
    """The exit code a shell gives a process ended by `signum`."""
    return 128 + signum


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """`last.ckpt` in the run's checkpoint folder: what `--ckpt_path last` resumes from."""
    callback = trainer.checkpoint_callback
    return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"


class Preemption(Checkpoint):
    """Saves `last.ckpt` at the optimizer step reached when SIGTERM or SIGINT arrives, then stops the run.

    Mid-way through gradient accumulation the step in progress is finished first (at most
    `accumulate_grad_batches - 1` more micro-batches), so the checkpoint lies on a step boundary and a resumed run
    ends with exactly the weights of an unbroken one. A Checkpoint callback, so Lightning runs it after
    ModelCheckpoint: a step checkpoint due at this step is written first.
    """

    def __init__(self, enabled: bool = True):
        """
        Args:
            enabled: Save and stop on SIGTERM/SIGINT (off: Lightning's own handling, which saves nothing).
        """
        self.enabled = enabled
        self.received: int | None = None
        self.requeued = False
        self._active = False
        self._previous: dict[int, Any] = {}
        self._step_at_batch_start = 0

    def _install(self, signum: int, handler: Any) -> None:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self._previous[signum] = signal.signal(signum, handler)

    def _restore(self) -> None:
        # `_previous` stays: Lightning's teardown may hand SIGINT back to `_on_signal`, which then passes it on.
        self._active = False
        for signum, handler in self._previous.items():
            if threading.current_thread() is threading.main_thread() and handler is not None:
                signal.signal(signum, handler)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # SIGINT now, before the data loader forks its workers: they inherit this handler rather than dying on Ctrl-C
        # (a terminal sends it to the whole process group) while the step in progress still needs batches.
        if self.enabled:
            self._active = True
            self._install(signal.SIGINT, self._on_signal)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # SIGTERM only now: Lightning sets its own just before training, which would stop mid-accumulation, exit 0.
        if self.enabled:
            self._install(signal.SIGTERM, self._on_signal)
            self._watch_requeue()

    def _watch_requeue(self) -> None:
        """Under SLURM, Lightning requeues the job on SIGUSR1 (auto_requeue); remember that it did."""
        lightning_handler = signal.getsignal(signal.SIGUSR1)
        if not (SLURMEnvironment.detect() and callable(lightning_handler)):
            return

        def requeue(signum: int, frame: FrameType | None) -> None:
            self.requeued = True
            lightning_handler(signum, frame)

        self._install(signal.SIGUSR1, requeue)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum)
        if not self._active:  # outside training (Lightning may hand this handler back): as if it were not here
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)
        elif self.received is None:
            self.received = signum
            log.warning("received %s: finishing the optimizer step in progress, then saving a checkpoint (send it "
                        "again to stop at once, without one)", signal.Signals(signum).name)
        else:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self._step_at_batch_start:
            return  # mid-way through accumulation: the step in progress finishes first
        # Every process decides at the same step, whichever of them got the signal.
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        path = last_checkpoint_path(trainer)
        if trainer.is_global_zero and path.is_symlink():  # save_last="link": never write through to a step file
            path.unlink()
        # A full checkpoint (optimizer, callbacks, data position) as ModelCheckpoint writes; saying so spares a log
        # line per process in which Lightning says it assumed it.
        trainer.save_checkpoint(path, weights_only=False)
        # Lightning hands a step's scalars (train/loss, ...) to the loggers only after this hook: without this, the
        # step the run stops at would have none, and the resumed run starts after it.
        trainer._logger_connector.update_train_step_metrics()
        name = signal.Signals(self.received or signal.SIGTERM).name
        requeue = "; SLURM requeues the job" if self.requeued else ""
        raise Preempted(f"{name} after optimizer step {trainer.global_step}: saved {path}{requeue}; continue with "
                        "--ckpt_path last",
                        exit_code=0 if self.requeued else signal_exit_code(self.received or signal.SIGTERM))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

"""Mistakes in what the user asked for, and runs that stopped themselves: `python -m amused_lightning` reports these
as one line, with exit code 2 for a mistake and the error's own `exit_code` otherwise."""

from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """A wrong setting, path or file: the message names the setting and says what to do; no traceback needed."""

    exit_code = 2
    label = "error"


class SettingError(UserError, ValueError):
    """A setting with a value it cannot take."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder named by a setting does not exist."""


class ExistingOutputError(UserError, FileExistsError):
    """An output would replace files the user did not ask to replace."""


class FolderInUseError(UserError):
    """Another live run holds the run folder."""


class RunStopped(Exception):
    """A run that stopped itself, to keep its checkpoints good or because it was told to: one line, no traceback."""

    exit_code = 1
    label = "error"

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class NonFiniteError(RunStopped, FloatingPointError):
    """A loss or gradient went NaN or infinite: the run stopped before the weights took it."""


class Preempted(RunStopped):
    """SIGTERM or SIGINT: the run saved a checkpoint at the step reached and stopped."""

    label = "stopped"
    # Every process of a multi-process run stops at the same step with this message: the first one says it.
    said_by_every_process = True


def user_error_types() -> tuple[type[BaseException], ...]:
    """Ours, argument parsing, and the user-facing errors of modules already imported (none is imported for this)."""
    types: list[type[BaseException]] = [UserError, RunStopped, argparse.ArgumentError]
    optional = {"amused_lightning.data.sources": "DataSourceError",
                "lightning.fabric.utilities.exceptions": "MisconfigurationException"}
    for module, name in optional.items():
        if module in sys.modules and hasattr(sys.modules[module], name):
            types.append(getattr(sys.modules[module], name))
    return tuple(types)


def one_line(error: BaseException) -> str:
    """The error's message on one line, as `error: ...` (`stopped: ...` for a run stopped by a signal)."""
    message = " ".join(str(error).split()) or type(error).__name__
    return f"{getattr(error, 'label', 'error')}: {message}"

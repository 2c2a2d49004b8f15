"""Mistakes in what the user asked for: `python -m amused_lightning` reports these as one line and exit code 2."""

from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """A wrong setting, path or file: the message names the setting and says what to do; no traceback needed."""


class SettingError(UserError, ValueError):
    """A setting with a value it cannot take."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder named by a setting does not exist."""


class ExistingOutputError(UserError, FileExistsError):
    """An output would replace files the user did not ask to replace."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Ours, argument parsing, and the user-facing errors of modules already imported (none is imported for this)."""
    types: list[type[BaseException]] = [UserError, argparse.ArgumentError]
    optional = {"amused_lightning.data.sources": "DataSourceError",
                "lightning.fabric.utilities.exceptions": "MisconfigurationException"}
    for module, name in optional.items():
        if module in sys.modules and hasattr(sys.modules[module], name):
            types.append(getattr(sys.modules[module], name))
    return tuple(types)


def one_line(error: BaseException) -> str:
    """The error's message on one line, as `error: ...`."""
    message = " ".join(str(error).split()) or type(error).__name__
    return f"error: {message}"

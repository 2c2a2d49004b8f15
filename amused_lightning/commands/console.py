"""Output switches of every command: verbosity (-q/--quiet, -v/--verbose, AMUSED_LIGHTNING_VERBOSITY) and --debug."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from amused_lightning.quiet import silence_harmless_messages

VERBOSITY_ENV, DEBUG_ENV = "AMUSED_LIGHTNING_VERBOSITY", "AMUSED_LIGHTNING_DEBUG"
SWITCHES = {"-q": "quiet", "--quiet": "quiet", "-v": "verbose", "--verbose": "verbose"}
# Our messages, and Lightning's (device lines, model summary): quiet keeps warnings and errors only.
LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}
LIGHTNING_LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.INFO}


@dataclass
class Console:
    """How much a command prints, and whether errors show their traceback."""

    verbosity: str = "normal"
    debug: bool = False


class _StderrHandler(logging.StreamHandler):
    """Writes to the `sys.stderr` of the moment, which tests and notebooks replace."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def take_switches(argv: list[str]) -> tuple[Console, list[str]]:
    """The output switches wherever they stand in `argv` (before a `--`), and the other arguments in order."""
    verbosity = os.environ.get(VERBOSITY_ENV, "normal")
    if verbosity not in LEVELS:
        verbosity = "normal"
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    rest, end = [], argv.index("--") if "--" in argv else len(argv)
    for i, arg in enumerate(argv):
        if i < end and arg in SWITCHES:
            verbosity = SWITCHES[arg]
        elif i < end and arg == "--debug":
            debug = True
        else:
            rest.append(arg)
    return Console(verbosity, debug), rest


def configure(console: Console) -> None:
    """Route our `logging` messages to stderr at the chosen level; silence known-harmless ones unless verbose."""
    ours = logging.getLogger("amused_lightning")
    if not any(isinstance(h, _StderrHandler) for h in ours.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        ours.addHandler(handler)
    ours.setLevel(LEVELS[console.verbosity])
    if console.verbosity != "verbose":
        silence_harmless_messages()


def apply_lightning_level(console: Console) -> None:
    """Lightning's loggers at the chosen level; call after Lightning is imported, which sets its own level."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(LIGHTNING_LEVELS[console.verbosity])

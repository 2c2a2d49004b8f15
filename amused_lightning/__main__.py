"""`python -m amused_lightning COMMAND ...` (or `amused-lightning COMMAND ...`): one table of every command."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NamedTuple

from amused_lightning.commands.console import Console, apply_lightning_level, configure, take_switches
from amused_lightning.errors import one_line, user_error_types
from amused_lightning.run.lock import is_first_process
from amused_lightning.threads import choose_waiting, load_average


class Command(NamedTuple):
    """A command: what it does, and the function that takes its arguments (imported only when it runs)."""

    summary: str
    target: str  # "module:function"


COMMANDS = {
    "fit": Command("train (or resume with --ckpt_path last) from a config: --config configs/<recipe>.yaml",
                   "amused_lightning.commands.fit:main"),
    "validate": Command("score a checkpoint on the held-out data and draw its validation images",
                        "amused_lightning.commands.validate:main"),
    "export": Command("write a checkpoint as a diffusers pipeline folder and LoRA file",
                      "amused_lightning.commands.export:main"),
    "check-data": Command("report a config's data without training: rows, captions, sizes, a preview grid",
                          "amused_lightning.commands.check_data:main"),
    "generate": Command("draw images for prompts from a checkpoint, a pipeline folder, or a base model and LoRA",
                        "amused_lightning.commands.generate:main"),
}


def usage() -> str:
    """The command table, as `--help` prints it."""
    rows = "\n".join(f"  {name:<12}{command.summary}" for name, command in COMMANDS.items())
    return (f"usage: python -m amused_lightning COMMAND [--help] [-q | -v] [--debug] ...\n\n"
            f"Finetune aMUSEd with Lightning.\n\ncommands:\n{rows}\n\n"
            "`python -m amused_lightning COMMAND --help` describes each one.\n\n"
            "output, with any command:\n"
            "  -q, --quiet    warnings, errors and progress only (or AMUSED_LIGHTNING_VERBOSITY=quiet)\n"
            "  -v, --verbose  also debug messages, and third-party notices hidden by default\n"
            "  --debug        show the traceback of a mistake in the settings (or AMUSED_LIGHTNING_DEBUG=1)")


def run(command: str, argv: list[str], console: Console) -> None:
    """Run `command`; a mistake in what the user asked for ends with one `error:` line and exit code 2, a run that
    stopped itself (non-finite values, a signal) with one line and its own exit code."""
    module, function = COMMANDS[command].target.split(":")
    try:
        target = getattr(importlib.import_module(module), function)
        apply_lightning_level(console)
        target(argv)
    except Exception as error:
        if console.debug or not isinstance(error, user_error_types()):
            raise
        parsing = isinstance(error, argparse.ArgumentError)
        hint = f" (see `python -m amused_lightning {command} --help`)" if parsing else ""
        if is_first_process() or not getattr(error, "said_by_every_process", False):
            print(one_line(error) + hint, file=sys.stderr)
        raise SystemExit(getattr(error, "exit_code", 2)) from None


def main(argv: list[str] | None = None) -> None:
    try:
        run_command_line(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        # The reader left early (`--help | head`): nothing more to say, and nowhere to say it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


def run_command_line(argv: list[str]) -> None:
    """The command table's answer to `argv`."""
    console, argv = take_switches(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)} "
              "(see `python -m amused_lightning --help`)", file=sys.stderr)
        raise SystemExit(2)
    configure(console)
    choose_waiting(load_average(), os.environ)  # before torch loads its OpenMP runtime, which reads it once
    run(argv[0], argv[1:], console)


if __name__ == "__main__":
    main()

"""`python -m amused_lightning COMMAND ...` (or `amused-lightning COMMAND ...`): one table of every command."""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    """A command: what it does, and the function that takes its arguments (imported only when it runs)."""

    summary: str
    target: str  # "module:function"


COMMANDS = {
    "fit": Command("train (or resume with --ckpt_path last) from a config: --config configs/<recipe>.yaml",
                   "amused_lightning.cli:fit"),
    "validate": Command("score a checkpoint on the held-out data and draw its validation images",
                        "amused_lightning.cli:validate"),
    "export": Command("write a checkpoint as a diffusers pipeline folder and LoRA file",
                      "amused_lightning.export:main"),
    "generate": Command("draw images for prompts from a checkpoint, a pipeline folder, or a base model and LoRA",
                        "amused_lightning.generate:main"),
}


def usage() -> str:
    """The command table, as `--help` prints it."""
    rows = "\n".join(f"  {name:<10}{command.summary}" for name, command in COMMANDS.items())
    return (f"usage: python -m amused_lightning COMMAND [--help] ...\n\nFinetune aMUSEd with Lightning.\n\n"
            f"commands:\n{rows}\n\n`python -m amused_lightning COMMAND --help` describes each one.")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] not in COMMANDS:
        print(f"{usage()}\n\nerror: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    module, function = COMMANDS[argv[0]].target.split(":")
    getattr(importlib.import_module(module), function)(argv[1:])


if __name__ == "__main__":
    main()

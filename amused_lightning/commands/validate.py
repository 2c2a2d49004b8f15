"""`validate`: score a checkpoint on the held-out data and draw its validation images, with `fit`'s settings."""

from __future__ import annotations

from amused_lightning.commands.fit import AmusedCLI, cli_main


def main(args: list[str]) -> AmusedCLI:
    """The `validate` command."""
    return cli_main(["validate", *args])

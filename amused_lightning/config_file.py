"""`--config FILE` for the commands with plain argparse parsers (`generate`, `export`): a YAML file of the command's
own option names (`guidance-scale: 3` or `guidance_scale: 3`), read before the command line, which overrides it.
Imports no torch, so `--help` stays instant."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from amused_lightning.errors import SettingError


class CommandParser(argparse.ArgumentParser):
    """An argparse parser whose mistakes raise ArgumentError, for the command table to report as one line."""

    def error(self, message: str):
        raise argparse.ArgumentError(None, message)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """The `--config` option, shown in `--help`."""
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="a YAML file of this command's settings by option name (prompts, output, "
                             "guidance-scale ...); the command line overrides it")


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parser.parse_args(argv)` with the settings of a `--config` file in front of the command line; positionals
    the command line leaves empty are taken from the file."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config", type=Path, default=None)
    known, _ = first.parse_known_args(argv)
    if known.config is None:
        return parser.parse_args(argv)
    tokens, positionals = config_tokens(parser, known.config)
    args = parser.parse_args([*tokens, *argv])
    for dest, value in positionals.items():
        if getattr(args, dest) in (None, []):
            setattr(args, dest, value)
    return args


def read_config(path: Path) -> dict:
    """The file's settings; an error naming it when it is not a YAML mapping."""
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SettingError(f"--config {str(path)!r}: cannot read it ({error})") from error
    if not isinstance(values, dict):
        raise SettingError(f"--config {str(path)!r} must hold settings by name (a YAML mapping), not "
                           f"{type(values).__name__}")
    return values


def config_tokens(parser: argparse.ArgumentParser, path: Path) -> tuple[list[str], dict]:
    """The file's options as command-line tokens, and its positional values by destination."""
    actions = {}
    for action in parser._actions:
        actions.setdefault(action.dest, []).append(action)
    tokens, positionals = [], {}
    for key, value in read_config(path).items():
        dest = str(key).replace("-", "_")
        if dest not in actions or dest in ("help", "config"):
            names = sorted(d.replace("_", "-") for d in actions if d not in ("help", "config"))
            raise SettingError(f"--config {str(path)!r}: {key!r} is no setting of this command ({', '.join(names)})")
        first = actions[dest][0]
        if not first.option_strings:
            positionals[dest] = [str(v) for v in value] if isinstance(value, list) else str(value)
        elif isinstance(first, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            tokens += [next(a for a in actions[dest] if a.const == bool(value)).option_strings[-1]] \
                if any(a.const == bool(value) for a in actions[dest]) else []
        else:
            values = value if isinstance(value, list) else [value]
            tokens += [first.option_strings[-1], *(str(v) for v in values)]
    return tokens, positionals

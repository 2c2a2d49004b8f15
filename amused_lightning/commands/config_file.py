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
    """`parser.parse_args(argv)` with the settings of a `--config` file in front of the command line; a setting the
    command line gives (or another of its mutually exclusive group) replaces the file's, and positionals the command
    line leaves empty are taken from the file."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config", type=Path, default=None)
    known, _ = first.parse_known_args(argv)
    if known.config is None:
        return parser.parse_args(argv)
    tokens, positionals = config_tokens(parser, known.config, given_dests(parser, argv))
    args = parser.parse_args([*tokens, *argv])
    for dest, value in positionals.items():
        if getattr(args, dest) in (None, []):
            setattr(args, dest, value)
    return args


def given_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations the options in `argv` set, with the others of their mutually exclusive groups."""
    flags = {token.split("=", 1)[0] for token in argv if token.startswith("-")}
    given = {action.dest for action in parser._actions if flags & set(action.option_strings)}
    for group in parser._mutually_exclusive_groups:
        dests = {action.dest for action in group._group_actions}
        if dests & given:
            given |= dests
    return given


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


def config_tokens(parser: argparse.ArgumentParser, path: Path, skip: set[str]) -> tuple[list[str], dict]:
    """The file's options as command-line tokens (leaving out the destinations in `skip`), and its positional values
    by destination; an unset (null) value is left out."""
    actions: dict[str, list[argparse.Action]] = {}
    for action in parser._actions:
        actions.setdefault(action.dest, []).append(action)
    tokens, positionals = [], {}
    for key, value in read_config(path).items():
        dest = str(key).replace("-", "_")
        if dest not in actions or dest in ("help", "config"):
            names = sorted(d.replace("_", "-") for d in actions if d not in ("help", "config"))
            raise SettingError(f"--config {str(path)!r}: {key!r} is no setting of this command ({', '.join(names)})")
        if value is None or dest in skip:
            continue
        values = setting_values(actions[dest][0], value, f"--config {str(path)!r}: {key}")
        if not actions[dest][0].option_strings:
            positionals[dest] = values if actions[dest][0].nargs in ("*", "+") else values[0]
        elif isinstance(actions[dest][0], (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            tokens += [a.option_strings[-1] for a in actions[dest] if a.const is value][:1]
        else:
            tokens += [actions[dest][0].option_strings[-1], *values]
    return tokens, positionals


def setting_values(action: argparse.Action, value: object, name: str) -> list:
    """A file's value for `action` as command-line words: a list only where it takes several; a switch's only as
    true or false."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise SettingError(f"{name}={value!r} must be true or false")
        return [value]
    several = action.nargs in ("*", "+")
    if isinstance(value, list) and not several:
        raise SettingError(f"{name}={value!r} takes one value, not a list")
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]

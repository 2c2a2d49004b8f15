"""Settings checked after parsing and before anything loads, which would otherwise fail only once the model is built
(the optimizer's values, the training resolution) or be taken in silence (a source class switched on the command line
keeping settings of the config's class)."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import Namespace
from jsonargparse.typing import import_object

from amused_lightning.data.datamodule import resolution_error
from amused_lightning.errors import SettingError
from amused_lightning.model.components import load_grid_configs
from amused_lightning.model.encoding import pixels_per_token, token_grid_multiple

log = logging.getLogger(__name__)


def check_optimizer(optimizer: Any) -> None:
    """The optimizer's settings tried on one weight: a value it refuses is named here, before the model loads."""
    class_path = getattr(optimizer, "class_path", None)
    if class_path is None:
        return  # the default class with its own defaults
    init_args = dict(optimizer.get("init_args") or {})
    lr = init_args.get("lr")
    if isinstance(lr, (int, float)) and lr < 0:
        raise SettingError(f"model.optimizer.init_args.lr={lr} cannot be negative (AdamW's default is 1e-3; the "
                           "recipes use 5e-6 to 1e-3)")
    optimizer_class = import_object(class_path)
    try:
        optimizer_class([torch.nn.Parameter(torch.zeros(1))], **init_args)
    except ValueError as error:
        defaults = inspect.signature(optimizer_class).parameters
        given = ", ".join(f"{key}={value!r}" for key, value in init_args.items()
                          if key not in defaults or defaults[key].default != value)
        raise SettingError(f"model.optimizer {class_path.rsplit('.', 1)[-1]} refuses its settings ({given}): "
                           f"{error}") from error


def check_resolution(resolution: int, pretrained: str, revision: str | None) -> None:
    """`data.resolution` against the token grid of the base model's configs (no weights load)."""
    vq_config, transformer_config = load_grid_configs(pretrained, revision)
    problem = resolution_error(resolution, pixels_per_token(vq_config), token_grid_multiple(transformer_config),
                               f"model.pretrained={pretrained!r}")
    if problem:
        raise SettingError(problem)


def configured_class(args: list[str], key: str) -> str | None:
    """The class the `--config` files in `args` name at `key` (`data.source`), the last one winning."""
    found = None
    for flag, value in zip(args, args[1:]):
        if flag in ("--config", "-c") and Path(value).is_file():
            node: Any = yaml.safe_load(Path(value).read_text()) or {}
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            named = node.get("class_path") if isinstance(node, dict) else node
            found = named if isinstance(named, str) else found
    return found


def switch_position(args: list[str], key: str) -> int | None:
    """Where the command line names `key`'s class itself (`--data.source WebDataset`), the last time."""
    positions = [i for i, arg in enumerate(args) if arg == f"--{key}" or arg.startswith(f"--{key}=")]
    return positions[-1] if positions else None


def keys_given_after(args: list[str], position: int, key: str) -> set[str]:
    """The settings of `key`'s class that the command line gives from `position` on."""
    flag, *value = args[position].split("=", 1)
    named = yaml.safe_load(value[0] if value else (args[position + 1] if position + 1 < len(args) else "")) or {}
    given = set((named.get("init_args") or {}) if isinstance(named, dict) else {})
    for arg in args[position + 1:]:
        name = arg.split("=", 1)[0]
        if name.startswith(f"--{key}."):
            given.add(name.removeprefix(f"--{key}.").removeprefix("init_args.").split(".")[0])
    return given


def restart_switched_class(config: Namespace, args: list[str], key: str) -> None:
    """A class at `key` named on the command line that differs from the config's starts from its own defaults:
    settings the config gave the other class (which may mean other things here) are not carried over."""
    position, before = switch_position(args, key), configured_class(args, key)
    value = config.get(key)
    if position is None or before is None or not isinstance(value, Namespace) or "class_path" not in value:
        return
    after = value["class_path"]
    if after.rsplit(".", 1)[-1] == before.rsplit(".", 1)[-1]:
        return
    given = keys_given_after(args, position, key)
    parameters = inspect.signature(import_object(after)).parameters
    dropped, missing = [], []
    for name, setting in (value.get("init_args") or Namespace()).items():
        default = parameters[name].default if name in parameters else None
        if name in given:
            continue
        if default is inspect.Parameter.empty:
            missing.append(f"--{key}.{name}")
        elif setting != default:
            dropped.append(f"{name}={setting!r}")
            value["init_args"][name] = default
    short = after.rsplit(".", 1)[-1]
    if missing:
        raise SettingError(f"--{key} {short} replaces the config's {before.rsplit('.', 1)[-1]}, whose settings are "
                           f"not carried over: give {short}'s own ({', '.join(missing)})")
    if dropped:
        log.info("--%s %s starts from its own defaults: the config's %s settings %s are not carried over", key, short,
                 before.rsplit(".", 1)[-1], ", ".join(dropped))

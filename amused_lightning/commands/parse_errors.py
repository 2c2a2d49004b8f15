"""The parser's errors about a config or command line as one line that names the setting and, for a name that is not
a setting, the nearest ones that are. Every `fit`, `validate` and `check-data` parse error goes through `explain`."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Iterable

from amused_lightning.model.components import missing_model_message

KEY = re.compile(r'Parser key "([^"]+)"')
NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
CLASS_PATH = re.compile(r"class_path[= ]'([^']+)'")
DOT_PATH = re.compile(r"Expected a dot import path string: (\S+)")
SUBTYPE = re.compile(r"<class '([^']+)'>")
NOT_EXPECTED = re.compile(r"does not accept option '([^']+)'")
REQUIRED = re.compile(r"arguments are required: (\S+)")
# Names other trainers use for our settings: a suggestion difflib alone would not make ("rank" is far from "r").
ALIASES = {"rank": "r", "lora_rank": "r", "network_dim": "r", "lora_alpha": "alpha", "network_alpha": "alpha",
           "learning_rate": "lr", "train_batch_size": "batch_size", "batchsize": "batch_size"}
# Settings inside a class's own settings, which the parser lists under no flag of their own.
INSIDE = {"lr": "--model.optimizer.init_args.lr", "learning_rate": "--model.optimizer.init_args.lr",
          "weight_decay": "--model.optimizer.init_args.weight_decay", "rank": "--model.lora.r",
          "alpha": "--model.lora.alpha", "path": "--data.source.path"}
# What the parser adds to a failed union that says nothing about the value itself.
BOILERPLATE = ("does not correspond to a subclass of", "Expected a <class 'NoneType'>", "Expected a path but")


def nearest(name: str, choices: Iterable[str]) -> list[str]:
    """The valid names closest to `name`: an alias's target first, then the closest spellings."""
    choices = list(choices)
    last = name.rsplit(".", 1)[-1]
    aliased = [choice for choice in choices if choice.rsplit(".", 1)[-1] == ALIASES.get(last, last)]
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    return list(dict.fromkeys([*aliased, *close]))[:3]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`; did you mean X?`, or nothing when no valid name is close."""
    found = nearest(name, choices)
    return f"; did you mean {' or '.join(found)}?" if found else ""


def class_settings(class_path: str) -> list[str]:
    """The names a class takes as settings (its constructor's parameters), empty when it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        target = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    skipped = ("self", "params", "args", "kwargs")
    return [p for p in inspect.signature(target).parameters if p not in skipped]


def concrete_subclasses(base_path: str) -> list[str]:
    """The names of the classes a value of type `base_path` may name."""
    module, _, name = base_path.rpartition(".")
    try:
        pending = [getattr(importlib.import_module(module), name)]
    except (ImportError, AttributeError, ValueError):
        return []
    found = []
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if not inspect.isabstract(cls) and exported(cls):
            found.append(cls.__name__)
    return sorted(set(found))


def exported(cls: type) -> bool:
    """Whether the package of `cls` offers it (lists it in `__all__`, or lists nothing): helpers it keeps to
    itself are no choice for a user."""
    package = importlib.import_module(cls.__module__.rpartition(".")[0] or cls.__module__)
    return cls.__name__ in getattr(package, "__all__", [cls.__name__])


def missing_required(message: str, options: dict[str, bool], given: list[str]) -> str | None:
    """A setting with no value; for the base model, the choices."""
    found = REQUIRED.search(message)
    if found is None:
        return None
    key = found.group(1).split(".", 1)[-1] if found.group(1).startswith(("fit.", "validate.")) else found.group(1)
    if key == "model.pretrained":
        return missing_model_message()
    # A class's own required setting is named without the class's key: the last class the command line named.
    owner = next((flag for flag in reversed(given) if options.get(flag)), None)
    name = f"{owner}.{key}" if owner and f"--{key}" not in options else f"--{key}"
    return f"{name} is required but not set"


def unknown_option(message: str, options: dict[str, bool], given: list[str]) -> str | None:
    """`--data.batchsize`: an option no setting has, with the nearest that exist."""
    if not message.startswith(("unrecognized arguments", "ambiguous option")):
        return None
    unknown = next((flag for flag in given if not known_flag(flag, options)), None)
    if unknown is None:
        return None
    found = nearest_flags(unknown, options)
    return f"{unknown} is no setting" + (f"; did you mean {' or '.join(found)}?" if found else "")


def unknown_key(message: str, options: dict[str, bool]) -> str | None:
    """`batchsize:` under `data:` in a config file: a key no setting has, with the nearest that exist."""
    found = NOT_EXPECTED.search(message)
    if found is None:
        return None
    near = [flag.removeprefix("--") for flag in nearest_flags(f"--{found.group(1)}", options)]
    return f"{found.group(1)} is no setting" + (f"; did you mean {' or '.join(near)}?" if near else "")


def nearest_flags(unknown: str, options: dict[str, bool]) -> list[str]:
    """The two options nearest `unknown`: a setting inside a class it names by its last part, else the closest in
    its own group, else the closest anywhere."""
    last, group = unknown.rsplit(".", 1)[-1], unknown.rpartition(".")[0] + "."
    leaves = [flag for flag in options if not any(other.startswith(flag + ".") for other in options)]
    inside = [INSIDE[last]] if last in INSIDE else []
    found = inside or nearest(unknown, [flag for flag in leaves if flag.startswith(group)]) or nearest(unknown, leaves)
    return found[:2]


def known_flag(flag: str, options: dict[str, bool]) -> bool:
    """Whether `flag` is an option, the unique start of one (as the parser takes it), or a setting inside one that
    takes them (`--data.source.path` inside `--data.source`)."""
    parts = flag.split(".")
    abbreviates = sum(option.startswith(flag) for option in options) == 1
    return flag in options or abbreviates or any(options.get(".".join(parts[:end])) for end in range(1, len(parts)))


def unaccepted_option(message: str) -> str | None:
    """`--model.lora.rank`: a setting its class does not have, with the class's nearest settings."""
    option, key, class_path = NOT_ACCEPTED.search(message), KEY.search(message), CLASS_PATH.search(message)
    if option is None or key is None:
        return None
    settings = class_settings(class_path.group(1)) if class_path else []
    owner = f" of {class_path.group(1).rsplit('.', 1)[-1]}" if class_path else ""
    name = option.group(1)
    listed = f" (its settings: {', '.join(settings)})" if settings else ""
    return f"{key.group(1)}.{name} is no setting{owner}{did_you_mean(name, settings)}{listed}"


def unknown_class(message: str) -> str | None:
    """`--data.source HFDatset`: a class name that is none of the classes the setting takes."""
    value, key = DOT_PATH.search(message), KEY.search(message)
    if value is None or key is None:
        return None
    names = sorted({name for base in SUBTYPE.findall(message) for name in concrete_subclasses(base)})
    return (f"{key.group(1)}={value.group(1)!r} is no class it takes{did_you_mean(value.group(1), names)}"
            f" (choose from {', '.join(names)})")


def union_reason(message: str) -> str | None:
    """A union of classes that all failed: the one reason that is not the parser's boilerplate."""
    key = KEY.search(message)
    if key is None or "Errors:" not in message:
        return None
    errors = message.split("Errors:", 1)[1].split("Given value", 1)[0].split(" - ")
    reasons = [e.strip() for e in errors if e.strip() and not any(b in e for b in BOILERPLATE)]
    return f"{key.group(1)}: {reasons[0]}" if len(reasons) == 1 else None


def explain(message: str, options: dict[str, bool], given: list[str]) -> str:
    """The parser's `message` as one line; `options` are the command's option flags, `given` those in its
    arguments."""
    message = " ".join(message.split())
    explainers: list[Callable[[], str | None]] = [
        lambda: missing_required(message, options, given), lambda: unknown_option(message, options, given),
        lambda: unknown_key(message, options), lambda: unaccepted_option(message), lambda: unknown_class(message),
        lambda: union_reason(message)]
    return next((line for line in (explainer() for explainer in explainers) if line), message)


def option_flags(parser, args: list[str]) -> dict[str, bool]:
    """The option flags of the subcommand `args` runs (of `parser` itself without one), each with whether it takes
    settings inside it (a class or a settings group: `--data.source.path`)."""
    subcommands = getattr(getattr(parser, "_subcommands_action", None), "_name_parser_map", {})
    chosen = next((subcommands[arg] for arg in args if arg in subcommands), parser)
    return {flag: type(action).__name__ == "ActionTypeHint"
            for flag, action in chosen._option_string_actions.items() if flag.startswith("--")}


def given_flags(args: list[str]) -> list[str]:
    """The option flags in `args`, without their values."""
    return [arg.split("=", 1)[0] for arg in args if arg.startswith("--")]


def user_error_within(error: BaseException, user_errors: tuple[type[BaseException], ...]) -> BaseException | None:
    """Our own error about a setting, where the parser wrapped it in its own (a class's constructor refused a
    value)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, user_errors):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None

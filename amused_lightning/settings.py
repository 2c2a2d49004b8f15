"""Settings groups: dataclasses whose fields each carry a docstring (what `--help` shows), named `*Settings`."""

from __future__ import annotations

from typing import Any


def as_settings(cls: type, value: Any) -> Any:
    """`value` as a `cls` dataclass (None stays None; a dict from saved hyperparameters is converted)."""
    return cls(**value) if isinstance(value, dict) else value

"""Config dataclasses share one rule (STYLE §2): building one from a dict (a config.json, a
config file) rejects unknown keys with a one-line error, so a typo never silently becomes a
default."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from semgen_cli.errors import ConfigError

T = TypeVar("T")


def from_dict_strict(cls: type[T], d: dict[str, Any], what: str) -> T:
    """`cls(**d)`, or a ConfigError naming the unknown keys of `what` and the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {what} key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(known))}")
    return cls(**d)

"""Option parsers shared by several commands (sizes like 480x832, device names), and the check
every command's numbers pass before its work starts."""

from __future__ import annotations

import math
from typing import Any

from semgen_cli.errors import ConfigError

INT_LIMIT = 2**63
"""Whole-number flags lie in [-INT_LIMIT, INT_LIMIT) (seeds in [0, INT_LIMIT)): what torch and
numpy take without overflowing."""


def check_numbers(values: dict[str, Any]) -> None:
    """Refuse, by flag, a non-finite number (`--fps nan`, `--lr inf`) or a whole number out of
    range (`--seed 18446744073709551616`) among a command's parsed parameters; the command's
    config then checks each value's own range. Lists and tuples are checked element by element."""
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(v, bool):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{flag} {v}: expected a finite number")
            if isinstance(v, int):
                low = 0 if name == "seed" or name.endswith("_seed") else -INT_LIMIT
                if not low <= v < INT_LIMIT:
                    raise ConfigError(f"{flag} {v}: out of range; expected a whole number from {low} to {INT_LIMIT - 1}")


def parse_size(text: str | None, flag: str = "--size") -> tuple[int, int] | None:
    """'64' → (64, 64); '480x832' → (480, 832); None stays None."""
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected N or HxW, e.g. 64 or 480x832") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise ConfigError(f"{flag} {text!r}: expected N or HxW with positive numbers")
    return values[0], values[1]

"""Option parsers shared by several commands (sizes like 480x832, device names)."""

from __future__ import annotations

from semgen_cli.errors import ConfigError


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

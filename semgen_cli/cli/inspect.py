"""`semgen inspect` (not built yet)."""

from semgen_cli.errors import SemgenError


def command() -> None:
    """Not built yet."""
    raise SemgenError("semgen inspect is not implemented yet")

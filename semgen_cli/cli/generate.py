"""`semgen generate` (not built yet)."""

from semgen_cli.errors import SemgenError


def command() -> None:
    """Not built yet."""
    raise SemgenError("semgen generate is not implemented yet")

"""`semgen extract` (not built yet)."""

from semgen_cli.errors import SemgenError


def command() -> None:
    """Not built yet."""
    raise SemgenError("semgen extract is not implemented yet")

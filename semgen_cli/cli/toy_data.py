"""`semgen toy-data` (not built yet)."""

from semgen_cli.errors import SemgenError


def command() -> None:
    """Not built yet."""
    raise SemgenError("semgen toy-data is not implemented yet")

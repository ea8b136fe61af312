"""`semgen train-semantic` (not built yet)."""

from semgen_cli.errors import SemgenError


def command() -> None:
    """Not built yet."""
    raise SemgenError("semgen train-semantic is not implemented yet")

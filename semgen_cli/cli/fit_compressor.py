"""`semgen fit-compressor` (not built yet)."""

from semgen_cli.errors import SemgenError


def command() -> None:
    """Not built yet."""
    raise SemgenError("semgen fit-compressor is not implemented yet")

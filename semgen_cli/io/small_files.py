"""Reading a small text file a user names on the command line (a --config, a --prompts-file):
never a device, a folder or an endless stream, never more than a bound, and always text."""

from __future__ import annotations

import os
from pathlib import Path

from semgen_cli.errors import InputError


def read_small_text(path: str | os.PathLike, flag: str, limit: int, what: str) -> str:
    """The UTF-8 text of `path`, at most `limit` bytes; `what` says what the file should be
    ("a JSON file of option values") in the one-line errors, which name `flag` and the path."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{flag} {path}: no such file")
    if not path.is_file():  # a folder, /dev/zero, a pipe: never read without end
        raise InputError(f"{flag} {path}: not a regular file ({what} is)")
    with open(path, "rb") as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        size = f"{limit >> 20} MiB" if limit >= 1 << 21 else f"{limit >> 10} KiB"
        raise InputError(f"{flag} {path}: larger than {size}; give {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{flag} {path}: not UTF-8 text (byte {err.start}); give {what}") from None

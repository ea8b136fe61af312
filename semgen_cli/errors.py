"""Errors a user can cause, and how they reach the terminal.

Every error a user can fix (a missing file, a bad flag, a corrupt shard) is a `SemgenError`.
The CLI prints it as one red line and exits with code 2; `SEMGEN_DEBUG=1` shows the traceback
instead. Library code raises these; it never prints or exits.
"""

from __future__ import annotations


class SemgenError(Exception):
    """A problem the user can fix. The message is one line in plain words naming the file or
    flag and saying what to do."""

    exit_code = 2


class InputError(SemgenError):
    """A file or folder the user gave cannot be used (missing, corrupt, wrong kind)."""


class ConfigError(SemgenError):
    """A flag, config value or combination of them is invalid."""


class MismatchError(SemgenError):
    """Two artifacts do not belong together (different encoder, compressor, preset...)."""


def out_of_memory(err: BaseException) -> str | None:
    """The first line of an allocation failure (numpy's MemoryError, torch's CPU allocator or
    CUDA's OutOfMemoryError), or None for any other error."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())
    ):
        return text[:200]
    return None

"""The files of a `generate` call: their names, the check that they can be written, the lock on
them, and their commit.

One prompt writes ``out.mp4``; several write ``out-000.mp4``, ``out-001.mp4``, …; beside each mp4
go its sidecar ``.json`` and, with ``--save-semantics``, its plan ``.semantic.safetensors``. A
video's files are written under temporary names and renamed together once the video is complete,
the sidecar last (:class:`Commit`), so an interrupted run never pairs old and new files.
"""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from semgen_cli.errors import InputError


def output_paths(out: str | os.PathLike, count: int) -> list[Path]:
    """``out.mp4`` for one video; ``out-000.mp4``, ``out-001.mp4``, … for several."""
    out = Path(out)
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i:03d}{out.suffix}") for i in range(count)]


def sidecar_path(mp4: Path) -> Path:
    return mp4.with_suffix(".json")


def semantics_path(mp4: Path) -> Path:
    return mp4.with_suffix(".semantic.safetensors")


def check_writable(paths: list[Path]) -> None:
    """Refuse, before any model loads, outputs whose folder cannot be created or written (a file
    in the way, a read-only file system, no permission), with one line naming the folder."""
    for folder in sorted({p.parent for p in paths}):
        probe = folder / f".semgen-write-test-{os.getpid()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise InputError(f"--out {paths[0]}: cannot write in {folder} ({err.strerror})") from None


@contextmanager
def holding(paths: list[Path]) -> Iterator[None]:
    """The write lock of every output file: a second `generate` to the same --out is refused,
    naming this one, instead of sharing its files."""
    from semgen_cli.io.lock import hold

    check_writable(paths)  # an unwritable place is named as such, not as a lock that cannot be taken
    with ExitStack() as stack:
        for path in paths:
            stack.enter_context(hold(path, "output file", folder=False))
        yield


class Commit:
    """Temp names for files that appear together: ``staged[final]`` is where to write ``final``;
    a clean exit renames every temp over its final name in the order given (the last one is the
    commit marker; its old version is removed first, so an interrupted commit never leaves an old
    marker describing new files); any failure removes the temps and leaves the old files as they
    were. An OSError becomes one line naming the file."""

    def __init__(self, finals: list[Path]) -> None:
        self.tmp = {f: f.with_name(f".{f.name}.tmp-{os.getpid()}") for f in finals}

    def __getitem__(self, final: Path) -> Path:
        return self.tmp[final]

    def __enter__(self) -> "Commit":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                *files, marker = self.tmp
                _replace(marker, None)
                for final in (*files, marker):
                    _replace(final, self.tmp[final])
            elif isinstance(exc, InputError):  # name the file the user asked for, not its temp name
                message = str(exc)
                for final, tmp in self.tmp.items():
                    message = message.replace(str(tmp), str(final))
                raise InputError(message) from None
        finally:
            for tmp in self.tmp.values():
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass


def _replace(final: Path, tmp: Path | None) -> None:
    """Rename `tmp` over `final` (remove `final` if `tmp` is None), with a one-line error."""
    try:
        if tmp is None:
            final.unlink(missing_ok=True)
        else:
            os.replace(tmp, final)
    except OSError as err:
        raise InputError(f"{final}: cannot write ({err.strerror})") from None

"""One writer per folder or output file: an advisory `fcntl.flock` on a lock file.

A run folder, a data folder (`extract --out`) and a `generate --out` file are written by one
process at a time. The writer holds an exclusive flock on a lock file (`FOLDER/.semgen.lock`, or
`.NAME.lock` beside an output file) for as long as it writes; the kernel drops the lock when the
process exits in any way, `kill -9` included, so a lock is never stale. The file records who
holds it (pid, host, command, start time) so that a second writer is refused with one line naming
the holder. The lock file is removed on a clean release; one left by a killed process is reused.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from semgen_cli.errors import InputError

LOCK_NAME = ".semgen.lock"
_HELD: set[str] = set()
"""Lock files this process holds: taking one again (a step, then the trainer it calls) is a no-op."""


def _holder_text(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 1 << 16).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or not info:
        return "another process"
    cmd = info.get("command", "?")
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, `{cmd[:200]}`, since {info.get('started', '?')}"


@contextmanager
def hold(path: str | os.PathLike, what: str, flag: str = "--out", folder: bool = True) -> Iterator[Path]:
    """Hold the write lock of `path` (a folder, created if missing, or with `folder=False` an
    output file) for the `with` block. InputError naming the holder if another process has it.

    A folder this call created and that is still empty at the end is removed again, so a refused
    or failed start leaves nothing behind."""
    path = Path(path)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 holds the lock for all
        yield path
        return
    lock_path, created = _lock_file(path, flag, folder)
    key = str(lock_path.resolve())
    if key in _HELD:
        yield path
        return
    fd, holder = _lock(lock_path)
    if fd is None:
        if created:
            _rmdir_if_empty(path)
        raise InputError(f"{flag} {path}: {what} in use by {holder}; wait for it to finish or choose another {flag}")
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(["semgen", *sys.argv[1:]]),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD.add(key)
        yield path
    finally:
        _HELD.discard(key)
        try:
            os.unlink(lock_path)  # still ours: we hold the lock
        except OSError:
            pass
        os.close(fd)
        if created:
            _rmdir_if_empty(path)


def _lock_file(path: Path, flag: str, folder: bool) -> tuple[Path, bool]:
    """The lock file of `path` (created empty if missing) and whether this call created the folder."""
    created = False
    try:
        if folder:
            if path.exists() and not path.is_dir():
                raise InputError(f"{flag} {path}: exists and is not a folder")
            created = not path.exists()
            path.mkdir(parents=True, exist_ok=True)
            lock_path = path / LOCK_NAME
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock_path = path.parent / f".{path.name}.lock"
        os.close(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666))
    except OSError as err:  # a read-only or unwritable place: say so before any work starts
        raise InputError(f"{flag} {path}: cannot write there ({err.strerror})") from None
    return lock_path, created


def _lock(lock_path: Path) -> tuple[int | None, str]:
    """(fd holding the exclusive flock of `lock_path`, "") or, if another process holds it,
    (None, who holds it)."""
    import fcntl

    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(fd)
            os.close(fd)
            return None, holder
        # The holder before us may have removed the file after we opened it: lock the file that is there now.
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, ""
        os.close(fd)


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass

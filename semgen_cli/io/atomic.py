"""Atomic writes: a file is either its old self or completely the new one, never half written.

Every artifact semgen writes (shards, records, markers, configs, checkpoints, indexes) goes
through these helpers: the bytes go to a temp file beside the target, are flushed to disk, and the
temp file is renamed over the target (``os.replace`` is atomic on POSIX). A failure removes the
temp file and, for a system error (full disk, read-only file system), becomes one line naming the
target. Folders are committed by writing their index or pointer file last (DESIGN §4).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from semgen_cli.errors import InputError


def follow_umask(path: str | os.PathLike) -> None:
    """Give `path` the mode a plain `open()` would (0o666 minus the umask): safetensors writes
    its files 0600, which would keep others from reading a shared data or run folder."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to a temp file beside `path`, fsync, then rename over it."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with _removed_on_failure(tmp, path):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with _removed_on_failure(tmp, path):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def save_tensors_atomic(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Save tensors under a temp name, then rename. Keep `metadata` to ONE key: safetensors
    stores it in a hash map whose order varies between processes, so several keys would make
    the bytes (and the sha256) of identical shards differ."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with _removed_on_failure(tmp, path):
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        follow_umask(tmp)
        os.replace(tmp, path)


@contextlib.contextmanager
def _removed_on_failure(tmp: Path, path: Path):
    """Remove `tmp` if the block fails in any way; an OSError (a read-only file system, a full
    disk, a folder that is not one) becomes one line naming `path` and the system's reason."""
    try:
        yield
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) or type(err).__name__ == "SafetensorError":  # safetensors reports I/O errors as its own
            raise InputError(f"{path}: cannot write ({write_problem(err)})") from None
        raise


def write_problem(err: BaseException) -> str:
    """The system's words for a failed write: "No space left on device", "Read-only file system", …"""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip().splitlines()
    text = text[0].split("I/O error: ")[-1] if text else type(err).__name__  # safetensors: "Error while serializing: I/O error: …"
    return text[:160]

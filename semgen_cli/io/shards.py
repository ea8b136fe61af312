"""Safetensors shards: the artifact `semgen extract` writes and every training step reads.

Layout of a data folder (DESIGN §4):

    data/shard-00000.safetensors   tensors of up to `shard_size` samples, keys "<id>/<field>"
    data/shard-00000.jsonl         one record per sample (id, source, duration, fps, frames, caption)
    data/.progress/shard-00000.json   commit marker of one finished shard (sources, failures, sha256)
    data/failures.jsonl            inputs that could not be used, and why
    data/index.json                written LAST and atomically: format, producer config, component
                                   fingerprints, fields, totals, per shard its samples, bytes, sha256

Samples keep their own length (a 60 s clip and a 3 s clip live side by side), so fields have a
variable leading axis. The index is the commit marker for the whole folder (mosaicml/streaming's
MDS pattern): a folder without index.json is not a dataset yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from semgen_cli.errors import InputError

FORMAT = "semgen-shards"
VERSION = 1
INDEX = "index.json"


def shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def follow_umask(path: str | os.PathLike) -> None:
    """Give `path` the mode a plain `open()` would (0o666 minus the umask): safetensors writes
    its files 0600, which would keep others from reading a shared data or run folder."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def file_record(path: str | os.PathLike) -> dict:
    """{"bytes": size, "sha256": digest} of a file, as checkpoints and bundles record it."""
    return {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}


def check_file_record(path: str | os.PathLike, record: dict | None, hashes: bool = True) -> None:
    """InputError naming `path` if it is missing or differs from `record` (size always; sha256
    too when `hashes`). A `record` of None (older artifacts recorded nothing) checks presence."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing; restore it or use an earlier checkpoint")
    if not isinstance(record, dict):
        return
    size = path.stat().st_size
    if "bytes" in record and size != record["bytes"]:
        raise InputError(f"{path}: {size} bytes, {record['bytes']} were written (truncated or replaced); restore it or use an earlier checkpoint")
    if hashes and "sha256" in record and sha256_file(path) != record["sha256"]:
        raise InputError(f"{path}: sha256 differs from the one recorded when it was written (the file is corrupt); restore it or use an earlier checkpoint")


def check_safetensors_header(path: str | os.PathLike) -> None:
    """Cheap structural check of a safetensors file (reads only its header): the header parses,
    and the tensors' byte ranges exactly fill the rest of the file. InputError naming the file."""
    import struct

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            if size < 8:
                raise ValueError(f"{size} bytes, too short for a header")
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8 or n > 100 << 20:
                raise ValueError(f"header of {n} bytes in a {size}-byte file (truncated?)")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            raise ValueError(f"{size} bytes, its header describes {8 + n + end} (truncated?)")
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a valid safetensors file ({err})") from None


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> dict:
    """All tensors of a safetensors file, or an InputError naming the file and what is wrong."""
    from safetensors.torch import load_file

    check_safetensors_header(path)
    try:
        return load_file(str(path), device=device)
    except Exception as err:  # SafetensorError and friends: a corrupt file
        raise InputError(f"{path}: not a readable safetensors file ({str(err).splitlines()[0][:160]})") from None


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


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read JSON with a one-line error naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such {what}")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (emptied or cut short), not the {what} it should be")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None


@dataclass
class ShardInfo:
    """One shard as the index lists it."""

    name: str
    samples: int
    bytes: int
    sha256: str

    @property
    def file(self) -> str:
        return f"{self.name}.safetensors"

    @property
    def records(self) -> str:
        return f"{self.name}.jsonl"


def _checked_index(path: Path, index: dict) -> list[ShardInfo]:
    """The shards of an index whose fields have the shapes readers rely on; InputError otherwise."""
    try:
        for key, kind in (("producer", dict), ("components", dict), ("fields", dict), ("shards", list)):
            if not isinstance(index[key], kind):
                raise TypeError(f"{key!r} is not a JSON {'object' if kind is dict else 'array'}")
        total = index["total_samples"]
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise TypeError("'total_samples' is not a whole number")
        shards = []
        for s in index["shards"]:
            info = ShardInfo(str(s["name"]), s["samples"], s["bytes"], s["sha256"])
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (info.samples, info.bytes)):
                raise TypeError(f"shard {info.name}: 'samples' and 'bytes' must be whole numbers")
            if "/" in info.name or info.name.startswith("."):
                raise TypeError(f"shard name {info.name!r} is not a file name")
            shards.append(info)
        if sum(s.samples for s in shards) != total:
            raise TypeError(f"'total_samples' {total} is not the sum of its shards' samples ({sum(s.samples for s in shards)})")
    except KeyError as err:
        raise InputError(f"{path}: not a complete semgen shard index (no {err} key); rerun `semgen extract`") from None
    except TypeError as err:
        raise InputError(f"{path}: malformed semgen shard index ({err}); rerun `semgen extract`") from None
    return shards


class Dataset:
    """Read side of a shard folder: the index, per-sample records, and tensors on demand.

    >>> ds = Dataset("data/")
    >>> ds.fields["latents"]["shape"]      # e.g. ["C", "T", "h", "w"] with fixed dims as ints
    >>> rec = ds.records[0]; t = ds.load(0)  # {"latents": Tensor, "semantic": ..., ...}
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: no such data folder (run `semgen extract VIDEOS --out {self.root}` first)")
        index_path = self.root / INDEX
        if not index_path.is_file():
            raise InputError(f"{index_path}: missing; this folder is not a finished extraction (rerun `semgen extract`, it resumes)")
        self.index = read_json(index_path, "index")
        if not isinstance(self.index, dict):
            raise InputError(f"{index_path}: not a semgen shard index (a JSON {type(self.index).__name__}, not an object)")
        if self.index.get("format") != FORMAT:
            raise InputError(f"{index_path}: not a semgen shard index (format {self.index.get('format')!r})")
        if self.index.get("version") != VERSION:
            raise InputError(f"{index_path}: index version {self.index.get('version')} is not supported (expected {VERSION})")
        self.shards = _checked_index(index_path, self.index)
        self._records: list[dict] | None = None
        self._handles: dict[str, Any] = {}

    @property
    def producer(self) -> dict:
        return self.index["producer"]

    @property
    def components(self) -> dict:
        return self.index["components"]

    @property
    def fields(self) -> dict:
        return self.index["fields"]

    def __len__(self) -> int:
        return int(self.index["total_samples"])

    @property
    def records(self) -> list[dict]:
        """Per-sample records of all shards, in index order, each with its "shard" name."""
        if self._records is None:
            out = []
            for s in self.shards:
                path = self.root / s.records
                if not path.is_file():
                    raise InputError(f"{path}: missing (listed in {self.root / INDEX})")
                for n, line in enumerate(path.read_text().splitlines(), 1):
                    if line.strip():
                        try:
                            rec = json.loads(line)
                        except json.JSONDecodeError:
                            raise InputError(f"{path}:{n}: not valid JSON") from None
                        rec["shard"] = s.name
                        out.append(rec)
            if len(out) != len(self):
                raise InputError(f"{self.root / INDEX}: lists {len(self)} samples but the shard records hold {len(out)}")
            seen: dict[tuple[str, str], dict] = {}
            for rec in out:  # extracted before ids kept the extension: one clip's caption over another's tensors
                if (other := seen.setdefault((rec["shard"], rec["id"]), rec)) is not rec:
                    raise InputError(
                        f"{self.root / rec['shard']}.safetensors: {other.get('source')} and {rec.get('source')} share the sample id "
                        f"{rec['id']!r}, so it holds the tensors of one of them only; extract the videos again into a new folder"
                    )
            self._records = out
        return self._records

    def _open(self, shard: str):
        if shard not in self._handles:
            from safetensors import safe_open

            path = self.root / f"{shard}.safetensors"
            if not path.is_file():
                raise InputError(f"{path}: missing (listed in {self.root / INDEX})")
            try:
                self._handles[shard] = safe_open(str(path), framework="pt")
            except Exception as err:
                raise InputError(f"{path}: not a readable safetensors file ({err}); run `semgen inspect {self.root} --verify`") from None
        return self._handles[shard]

    def load(self, i: int, fields: list[str] | None = None) -> dict:
        """Tensors of sample `i` (all fields, or the ones named)."""
        rec = self.records[i]
        handle = self._open(rec["shard"])
        out = {}
        for field in fields or list(self.fields):
            key = f"{rec['id']}/{field}"
            try:
                out[field] = handle.get_tensor(key)
            except Exception as err:
                raise InputError(f"{self.root / rec['shard']}.safetensors: cannot read {key} ({err})") from None
        return out

    def __getstate__(self) -> dict:  # safe_open handles do not pickle (DataLoader workers)
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def verify(self) -> Iterator[tuple[ShardInfo, str | None]]:
        """Recompute each shard's sha256; yields (shard, problem or None)."""
        for s in self.shards:
            path = self.root / s.file
            if not path.is_file():
                yield s, f"{path}: missing"
                continue
            size = path.stat().st_size
            if size != s.bytes:
                yield s, f"{path}: {size} bytes, index says {s.bytes}"
                continue
            digest = sha256_file(path)
            yield s, None if digest == s.sha256 else f"{path}: sha256 {digest[:12]}… does not match the index ({s.sha256[:12]}…)"

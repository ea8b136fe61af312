"""Safetensors shards: the artifact `semgen extract` writes and every training step reads.

Layout of a data folder (DESIGN §4):

    data/shard-00000.safetensors   tensors of up to `shard_size` samples, keys "<id>/<field>"
    data/shard-00000.jsonl         one record per sample (id, source, duration, fps, frames, caption)
    data/.progress/shard-00000.json   commit marker of one finished shard (sources, failures, sha256)
    data/failures.jsonl            inputs that could not be used, and why
    data/index.json                written LAST and atomically: format, producer config, component
                                   fingerprints, fields, totals, per shard its samples, bytes, sha256

`ShardWriter` writes such a folder (a shard per `shard_size` inputs, each committed by its
marker, the index last); `Dataset` reads it. Samples keep their own length (a 60 s clip and a
3 s clip live side by side), so fields have a variable leading axis. The index is the commit marker for the whole folder (mosaicml/streaming's
MDS pattern): a folder without index.json is not a dataset yet.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from semgen_cli.errors import InputError
from semgen_cli.io.atomic import follow_umask as follow_umask  # re-exported: importers of these names from here keep working
from semgen_cli.io.atomic import save_tensors_atomic, write_json_atomic, write_text_atomic
from semgen_cli.io.atomic import write_problem as write_problem

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



# ----------------------------------------------------------------------------- write side


@dataclass(frozen=True)
class Field:
    """One tensor of every sample: its axis names and the one axis whose length varies by sample."""

    axes: tuple[str, ...]
    variable: int


class _OpenShard:
    """The shard being written: its samples' tensors and records, and its failed inputs."""

    def __init__(self, k: int) -> None:
        self.k, self.tensors, self.records, self.failures = k, {}, [], []

    @property
    def inputs(self) -> int:
        return len(self.records) + len(self.failures)


class ShardWriter:
    """Write side of a shard folder: rolls to a new shard every `shard_size` inputs, commits each
    shard with its marker, and writes index.json last (mosaicml/streaming's MDS writer pattern).

    The inputs (`sources`, relative paths in a fixed order) are planned up front: shard k holds
    inputs ``k * shard_size`` up to ``(k + 1) * shard_size``, failed ones included, so a rerun
    puts every input in the same shard. Each input becomes a sample (:meth:`write`) or a failure
    (:meth:`fail`), in plan order; once a shard has all its inputs it is flushed (tensors, records,
    then its commit marker ``.progress/shard-k.json``) and the next input opens the shard it
    starts, skipping shards that are :meth:`done` or that another rank writes. :meth:`finish`
    indexes the folder. A shard left unfinished by an exception is dropped; a rerun redoes it.
    """

    def __init__(self, root: str | os.PathLike, sources: list[str], shard_size: int, fields: dict[str, Field], dtype: str):
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.root = Path(root)
        self.plan = [sources[i : i + shard_size] for i in range(0, len(sources), shard_size)]
        self.fields, self.dtype = fields, dtype
        self._starts = {shard[0]: k for k, shard in enumerate(self.plan)}
        self._open: _OpenShard | None = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        shard, self._open = self._open, None
        if exc_type is None and shard is not None:
            raise ValueError(f"{shard_name(shard.k)}: {shard.inputs} of its {len(self.plan[shard.k])} inputs written")

    def marker(self, k: int) -> Path:
        """The commit marker of shard `k`."""
        return self.root / ".progress" / f"{shard_name(k)}.json"

    def done(self, k: int) -> bool:
        """Shard `k` is finished: its marker lists the planned sources, and its file (re-hashed:
        a corrupt one is written again rather than indexed) and records are there."""
        path = self.marker(k)
        if not path.is_file():
            return False
        try:
            done = json.loads(path.read_text())
        except json.JSONDecodeError:
            return False
        if done.get("sources") != self.plan[k]:
            return False
        if done["samples"] == 0:
            return True
        name = shard_name(k)
        shard = self.root / f"{name}.safetensors"
        return (shard.is_file() and shard.stat().st_size == done["bytes"] and (self.root / f"{name}.jsonl").is_file()
                and sha256_file(shard) == done.get("sha256"))

    def write(self, record: dict, tensors: dict) -> None:
        """One sample: its `record` (a line of the shard's records: "id", "source", "duration"...)
        and its tensors by field name, stored as "<id>/<field>", floating ones in `dtype`."""
        import torch

        if set(tensors) != set(self.fields):
            raise ValueError(f"{record['source']}: tensors {sorted(tensors)}, the shards hold {sorted(self.fields)}")
        shard = self._expect(record["source"])
        dtype = getattr(torch, self.dtype)
        for name, value in tensors.items():
            shard.tensors[f"{record['id']}/{name}"] = value.to(dtype) if value.is_floating_point() else value
        shard.records.append(record)
        self._roll()

    def fail(self, source: str, reason: str) -> None:
        """An input that gave no sample, and why (listed in failures.jsonl)."""
        self._expect(source).failures.append({"source": source, "reason": reason})
        self._roll()

    def _expect(self, source: str) -> _OpenShard:
        if self._open is None:
            if source not in self._starts:
                raise ValueError(f"{source!r} does not start a shard; write each shard's inputs whole and in plan order")
            self._open = _OpenShard(self._starts[source])
        shard = self._open
        expected = self.plan[shard.k][shard.inputs]
        if source != expected:
            raise ValueError(f"{shard_name(shard.k)}: {source!r} written where the plan has {expected!r}")
        return shard

    def _roll(self) -> None:
        shard = self._open
        if shard.inputs < len(self.plan[shard.k]):
            return
        self._open = None
        name = shard_name(shard.k)
        nbytes, digest = 0, None
        if shard.records:
            path = self.root / f"{name}.safetensors"
            save_tensors_atomic(path, shard.tensors, metadata={"semgen": json.dumps({"format": FORMAT, "shard": name})})
            write_text_atomic(self.root / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in shard.records))
            nbytes, digest = path.stat().st_size, sha256_file(path)
        self.marker(shard.k).parent.mkdir(exist_ok=True)
        write_json_atomic(self.marker(shard.k), {
            "name": name,
            "sources": self.plan[shard.k],
            "samples": len(shard.records),
            "seconds": sum(r["duration"] for r in shard.records),
            "bytes": nbytes,
            "sha256": digest,
            "failures": shard.failures,
            "truncated": sum(1 for r in shard.records if r.get("truncated")),
        })

    def finish(self, header: dict, config: dict | None = None) -> dict:
        """Index every planned shard (all ranks' markers must be there): failures.jsonl, then the
        producer's `config` as config.json, then index.json last and atomically; `header`
        ("producer", "components", ...) goes into the index before its fields and totals, which
        it returns."""
        if self._open is not None:
            raise ValueError(f"finish() with {shard_name(self._open.k)} unfinished")
        shards, failures = [], []
        total, seconds, truncated = 0, 0.0, 0
        owner: dict[str, str] = {}  # sample id -> shard that holds it
        for k in range(len(self.plan)):
            path = self.marker(k)
            if not path.is_file():
                raise InputError(f"{path}: missing; another rank did not finish — rerun the same command to resume")
            marker = read_json(path)
            failures.extend(marker["failures"])
            truncated += marker.get("truncated", 0)
            if marker["samples"]:
                self._check_ids(marker, owner)
                shards.append({key: marker[key] for key in ("name", "samples", "bytes", "sha256", "seconds")})
                total += marker["samples"]
                seconds += marker["seconds"]
        fields = self._field_shapes(shards)
        write_text_atomic(self.root / "failures.jsonl", "".join(json.dumps(f) + "\n" for f in failures))
        if config is not None:
            write_json_atomic(self.root / "config.json", config)
        index = {"format": FORMAT, "version": VERSION, **header, "fields": fields, "total_samples": total,
                 "total_seconds": seconds, "failed": len(failures), "truncated": truncated, "shards": shards}
        write_json_atomic(self.root / INDEX, index)
        return index

    def _check_ids(self, marker: dict, owner: dict[str, str]) -> None:
        """The index counts a shard's samples only if its records and its tensors name the same ids,
        as many as its marker says, none of them held by another shard."""
        from safetensors import safe_open

        name = marker["name"]
        records = self.root / f"{name}.jsonl"
        ids = [json.loads(line)["id"] for line in records.read_text().splitlines() if line.strip()]
        with safe_open(str(self.root / f"{name}.safetensors"), framework="pt") as f:
            held = {key.rsplit("/", 1)[0] for key in f.keys()}
        if len(ids) != marker["samples"] or set(ids) != held or len(set(ids)) != len(ids):
            raise InputError(
                f"{records}: {len(ids)} records ({len(set(ids))} distinct ids) for {len(held)} tensor sets, its marker says {marker['samples']}; "
                "extract into a new --out"
            )
        for sid in ids:
            if sid in owner:
                raise InputError(f"{self.root}: sample id {sid!r} is held by both {owner[sid]} and {name}; extract into a new --out")
            owner[sid] = name

    def _field_shapes(self, shards: list[dict]) -> dict:
        """Field shapes from the first sample: the variable axis by name, the others as ints."""
        if not shards:
            return {}
        from safetensors import safe_open

        with safe_open(str(self.root / f"{shards[0]['name']}.safetensors"), framework="pt") as f:
            sid = sorted(f.keys())[0].split("/")[0]
            shapes = {}
            for name, spec in self.fields.items():
                shape = f.get_slice(f"{sid}/{name}").get_shape()
                shapes[name] = {
                    "dtype": self.dtype,
                    "shape": [spec.axes[i] if i == spec.variable else int(s) for i, s in enumerate(shape)],
                    "axes": list(spec.axes),
                }
        return shapes

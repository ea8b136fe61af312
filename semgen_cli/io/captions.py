"""Captions for a folder of videos.

Two conventions (DESIGN §4): `videos/metadata.jsonl` with `{"file_name": ..., "text": ...}` per
line (the Hugging Face imagefolder convention), or a `.txt` file beside each video with the same
stem. metadata.jsonl wins where both exist. A subfolder may have its own metadata.jsonl naming its
videos relative to itself (so two `semgen toy-data` outputs side by side extract as one data set);
where two files name the same video, the deeper one wins.

Captions come from whoever made the data set, so they are read as bounded data: a metadata line
is at most `MAX_LINE_BYTES`, a caption at most `MAX_CAPTION_CHARS`, and of a line's other fields
only short scalars are kept (as the sample's attributes, at most `MAX_ATTRIBUTES` of them). A
sidecar that resolves outside the videos folder (a symlink out of it) is refused, never read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from semgen_cli.errors import InputError

MAX_LINE_BYTES = 1 << 20
"""Longest metadata.jsonl line read (1 MiB)."""
MAX_CAPTION_CHARS = 16384
"""Longest caption kept; text encoders read a few hundred tokens of it at most."""
MAX_ATTRIBUTES = 16
"""Extra fields of a metadata line kept as attributes (strings of at most MAX_ATTRIBUTE_CHARS, numbers, booleans)."""
MAX_ATTRIBUTE_CHARS = 256


def escapes(path: Path, folder: Path) -> Path | None:
    """Where `path` really is, if that is outside `folder` (a symlink out of it); else None."""
    real = Path(os.path.realpath(path))
    base = Path(os.path.realpath(folder))
    return None if real == base or base in real.parents else real


def load_captions(folder: str | Path) -> dict[str, dict]:
    """Map of video path relative to `folder` (posix) → its metadata record (with "text"), from
    `folder/metadata.jsonl` and any in its subfolders (shallowest first, so deeper files win)."""
    folder = Path(folder)
    metas = [folder / "metadata.jsonl"] if (folder / "metadata.jsonl").is_file() else []
    metas += sorted((m for m in folder.rglob("*/metadata.jsonl") if m.is_file()), key=lambda m: (len(m.parts), m.as_posix()))
    out: dict[str, dict] = {}
    for meta in metas:
        if (real := escapes(meta, folder)) is not None:
            raise InputError(f"{meta}: resolves to {real}, outside {folder}; semgen reads only files inside the videos folder")
        out.update(_read_metadata(meta, meta.parent.relative_to(folder)))
    return out


def _read_metadata(meta: Path, prefix: Path) -> dict[str, dict]:
    """Records of one metadata.jsonl keyed by `prefix / file_name` (posix), read line by line."""
    out: dict[str, dict] = {}
    with open(meta, "rb") as f:
        n = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            n += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise InputError(f"{meta}:{n}: line longer than {MAX_LINE_BYTES} bytes; a line holds one caption of at most {MAX_CAPTION_CHARS} characters")
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise InputError(f"{meta}:{n}: not valid JSON") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str) or not isinstance(rec.get("text"), str):
                raise InputError(f'{meta}:{n}: each line needs a string "file_name" and a string "text"')
            if len(rec["text"]) > MAX_CAPTION_CHARS:
                raise InputError(f"{meta}:{n}: caption of {len(rec['text'])} characters; the limit is {MAX_CAPTION_CHARS}")
            name = (prefix / rec["file_name"]).as_posix()
            out[name] = {**_attributes(rec), "file_name": name, "text": rec["text"]}
    return out


def _attributes(rec: dict) -> dict:
    """The short scalar fields of a metadata line besides file_name and text (others are dropped)."""
    kept = {}
    for key, value in rec.items():
        if key in ("file_name", "text") or len(kept) >= MAX_ATTRIBUTES or len(key) > MAX_ATTRIBUTE_CHARS:
            continue
        if value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= MAX_ATTRIBUTE_CHARS):
            kept[key] = value
    return kept


def caption_for(video: Path, folder: Path, table: dict[str, dict]) -> dict | None:
    """The caption record of one video: metadata.jsonl first, then a sidecar .txt; None if none.
    InputError for a sidecar that resolves outside `folder`, is too long or is not a file."""
    rel = video.relative_to(folder).as_posix()
    if rel in table:
        return table[rel]
    txt = video.with_suffix(".txt")
    if not (txt.exists() or txt.is_symlink()):
        return None
    if (real := escapes(txt, folder)) is not None:
        raise InputError(f"{txt}: resolves to {real}, outside {folder}; semgen reads only files inside the videos folder")
    if not txt.is_file():
        raise InputError(f"{txt}: not a regular file; a caption sidecar is a text file")
    with open(txt, "rb") as f:
        raw = f.read(4 * MAX_CAPTION_CHARS + 1)  # UTF-8 takes at most 4 bytes a character
    text = raw.decode("utf-8", errors="replace").strip()
    if len(raw) > 4 * MAX_CAPTION_CHARS or len(text) > MAX_CAPTION_CHARS:
        raise InputError(f"{txt}: caption longer than {MAX_CAPTION_CHARS} characters")
    if text:
        return {"file_name": rel, "text": text}
    return None

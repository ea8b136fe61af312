"""Captions for a folder of videos.

Two conventions (DESIGN §4): `videos/metadata.jsonl` with `{"file_name": ..., "text": ...}` per
line (the Hugging Face imagefolder convention; extra fields are kept as attributes), or a `.txt`
file beside each video with the same stem. metadata.jsonl wins where both exist. A subfolder may
have its own metadata.jsonl naming its videos relative to itself (so two `semgen toy-data` outputs
side by side extract as one data set); where two files name the same video, the deeper one wins.
"""

from __future__ import annotations

import json
from pathlib import Path

from semgen_cli.errors import InputError


def load_captions(folder: str | Path) -> dict[str, dict]:
    """Map of video path relative to `folder` (posix) → its metadata record (with "text"), from
    `folder/metadata.jsonl` and any in its subfolders (shallowest first, so deeper files win)."""
    folder = Path(folder)
    metas = [folder / "metadata.jsonl"] if (folder / "metadata.jsonl").is_file() else []
    metas += sorted((m for m in folder.rglob("*/metadata.jsonl") if m.is_file()), key=lambda m: (len(m.parts), m.as_posix()))
    out: dict[str, dict] = {}
    for meta in metas:
        out.update(_read_metadata(meta, meta.parent.relative_to(folder)))
    return out


def _read_metadata(meta: Path, prefix: Path) -> dict[str, dict]:
    """Records of one metadata.jsonl keyed by `prefix / file_name` (posix)."""
    out: dict[str, dict] = {}
    for n, line in enumerate(meta.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{meta}:{n}: not valid JSON") from None
        if not isinstance(rec, dict) or "file_name" not in rec or not isinstance(rec.get("text"), str):
            raise InputError(f'{meta}:{n}: each line needs "file_name" and a string "text"')
        name = (prefix / rec["file_name"]).as_posix()
        out[name] = {**rec, "file_name": name}
    return out


def caption_for(video: Path, folder: Path, table: dict[str, dict]) -> dict | None:
    """The caption record of one video: metadata.jsonl first, then a sidecar .txt; None if none."""
    rel = video.relative_to(folder).as_posix()
    if rel in table:
        return table[rel]
    txt = video.with_suffix(".txt")
    if txt.is_file():
        text = txt.read_text(errors="replace").strip()
        if text:
            return {"file_name": rel, "text": text}
    return None

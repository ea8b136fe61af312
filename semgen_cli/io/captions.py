"""Captions for a folder of videos.

Two conventions (DESIGN §4): `videos/metadata.jsonl` with `{"file_name": ..., "text": ...}` per
line (the Hugging Face imagefolder convention; extra fields are kept as attributes), or a `.txt`
file beside each video with the same stem. metadata.jsonl wins where both exist.
"""

from __future__ import annotations

import json
from pathlib import Path

from semgen_cli.errors import InputError


def load_captions(folder: str | Path) -> dict[str, dict]:
    """Map of video path relative to `folder` (posix) → its metadata record (with "text")."""
    folder = Path(folder)
    meta = folder / "metadata.jsonl"
    out: dict[str, dict] = {}
    if meta.is_file():
        for n, line in enumerate(meta.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"{meta}:{n}: not valid JSON") from None
            if not isinstance(rec, dict) or "file_name" not in rec or not isinstance(rec.get("text"), str):
                raise InputError(f'{meta}:{n}: each line needs "file_name" and a string "text"')
            out[Path(rec["file_name"]).as_posix()] = rec
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

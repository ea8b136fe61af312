"""`pipeline.json`: the file that names a trained pipeline (a latent run and a semantic run), and
its reader (what `semgen generate`, `toy-eval` and `info` use to find the embedded default).

The file (docs/formats.md) holds ``{"latent_run": PATH, "semantic_run": PATH}``, paths relative to
the file's folder, and for the bundle also ``files``: the bytes and sha256 of every weight file
(the reader checks the sizes; `semgen inspect RUN --verify` the hashes).
"""

from __future__ import annotations

import os
from pathlib import Path

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.io.shards import check_file_record, read_json

ASSETS = Path(__file__).resolve().parent / "assets"


def default_pipeline(path: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The runs a pipeline file names: ``{"latent_run": PATH, "semantic_run": PATH}``, paths
    relative to the file's folder. Default: the bundled embedded default,
    ``semgen_cli/assets/pipeline.json``."""
    if path is None:
        path, what, fix = ASSETS / "pipeline.json", "bundled pipeline file", "reinstall semgen"
        if not path.is_file():
            raise ConfigError(
                "no bundled default pipeline in this install yet (semgen_cli/assets/pipeline.json); "
                "pass --latent-run and --semantic-run"
            )
    else:
        path, what, fix = Path(path), "pipeline file", "write it with examples/toy/bundle.py"
        if not path.is_file():
            raise InputError(f"--pipeline {path}: no such file (give a pipeline.json written by examples/toy/bundle.py)")
    d = read_json(path, what)
    try:
        runs = (path.parent / d["latent_run"]).resolve(), (path.parent / d["semantic_run"]).resolve()
    except (KeyError, TypeError):
        raise InputError(f"{path}: expected {{\"latent_run\": PATH, \"semantic_run\": PATH}}; {fix}") from None
    for rel, rec in (d.get("files") or {}).items():  # sizes only (cheap); `semgen inspect RUN --verify` hashes
        check_file_record(path.parent / rel, rec, hashes=False)
    return runs

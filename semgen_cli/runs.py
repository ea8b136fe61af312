"""Reading the run folders that training steps write (DESIGN §4 "Runs").

A run folder holds `config.json` (the resolved config of the step that made it, with the data's
component fingerprints) and the trainer's checkpoints. Later steps read shapes and fingerprints
from here instead of asking again, and refuse artifacts that do not belong together.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from semgen_cli.errors import InputError, MismatchError
from semgen_cli.io.shards import read_json


def tensors_fingerprint(tensors: dict[str, torch.Tensor], prefix: str = "") -> str:
    """Short sha256 over sorted names, shapes and fp32 bytes of a state dict."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return f"{prefix}{h.hexdigest()[:12]}"


def read_run(path: str | Path, step: str, flag: str) -> dict:
    """`config.json` of a run made by `step` (e.g. "train-latent"); errors name the `flag`."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{flag} {path}: no such run folder")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{flag} {path}: no config.json; not a run folder written by `semgen {step}`")
    cfg = read_json(cfg_path)
    if cfg.get("step") != step:
        raise MismatchError(f"{flag} {path}: made by `semgen {cfg.get('step')}`, expected a `semgen {step}` run")
    return cfg


def check_same_data(out: str | Path, data: str | Path, allow: bool) -> None:
    """On --resume: refuse a run folder that was trained on another data folder, unless `allow`
    (--allow-new-data); the run's config.json would otherwise silently change its data path."""
    out = Path(out)
    if not (out / "config.json").is_file():
        return
    before = read_json(out / "config.json")
    old = (before.get("data") or {}).get("path") if isinstance(before, dict) and isinstance(before.get("data"), dict) else None
    new = str(Path(data).resolve())
    if old and old != new and not allow:
        raise MismatchError(f"{out}: the run was trained on {old}, not {new}; pass --allow-new-data to continue it on this data, or choose a new --out")


def split_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `state` under `prefix.` with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}

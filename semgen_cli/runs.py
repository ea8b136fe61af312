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
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_path}: not a run config (a JSON {type(cfg).__name__}, not an object); not written by `semgen {step}`")
    if cfg.get("step") != step:
        if "step" not in cfg:
            raise InputError(f"{cfg_path}: no 'step' key; not a run config written by `semgen {step}` (emptied or replaced?)")
        raise MismatchError(f"{flag} {path}: made by `semgen {cfg.get('step')}`, expected a `semgen {step}` run")
    missing = [k for k, kind in _RUN_KEYS.get(step, {}).items() if not isinstance(cfg.get(k), kind)]
    missing += [f"data.{k}" for k in ("components", "producer") if isinstance(cfg.get("data"), dict) and not isinstance(cfg["data"].get(k), dict)]
    if missing:
        raise InputError(f"{cfg_path}: missing or malformed {', '.join(missing)}; not a complete `semgen {step}` run config")
    return cfg


_RUN_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "fit-compressor": {"compressor": dict, "features": str, "data": dict},
    "train-latent": {"settings": dict, "dit": dict, "data": dict, "latent_shape": list, "shift": (int, float), "window": dict},
    "train-semantic": {"settings": dict, "dit": dict, "data": dict, "latent_run": dict, "channels": int, "semantic_grid": list,
                       "shift": (int, float), "max_seconds": (int, float)},
}
"""What a run's config.json must hold for the steps that read it (types of the top-level values)."""


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


def verify_run(path: str | Path):
    """Recheck every weight file of a run folder against the bytes and sha256 recorded when it was
    written (each checkpoint's state.json; a fit-compressor run's config.json for its weights).
    Yields (file, ok, note): a file recorded by an older semgen has only its header checked."""
    from semgen_cli.io.shards import check_file_record, check_safetensors_header
    from semgen_cli.training import STATE, _valid_checkpoints

    path = Path(path)
    cfg = read_json(path / "config.json")
    if isinstance(cfg, dict) and isinstance(cfg.get("files"), dict):
        for name, rec in cfg["files"].items():
            yield _check_one(path / name, rec, check_file_record, check_safetensors_header)
    for _, ckpt in _valid_checkpoints(path):
        state = read_json(ckpt / STATE, "checkpoint state")
        files = state.get("files") if isinstance(state, dict) else None
        if not isinstance(files, dict):
            for f in sorted(ckpt.glob("*.safetensors")):
                yield _check_one(f, None, check_file_record, check_safetensors_header)
            continue
        for name, rec in files.items():
            yield _check_one(ckpt / name, rec, check_file_record, check_safetensors_header)


def _check_one(file: Path, rec, check_file_record, check_header) -> tuple[Path, bool, str]:
    try:
        check_file_record(file, rec)
        if file.suffix == ".safetensors":
            check_header(file)
    except InputError as err:
        return file, False, str(err)
    return file, True, "sha256 ok" if rec else "header ok (no sha256 recorded)"


def split_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `state` under `prefix.` with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}

"""The layout of a run folder and reading checkpoints back (DESIGN §4, STYLE "artifacts are folders").

Owns the names (`checkpoints/step-0000100/` with `model.safetensors`, `ema.safetensors`,
`optimizer.pt` and `state.json`, written last; `checkpoints/latest`; `metrics.jsonl`), finding the
newest committed checkpoint, refusing a run folder before a step writes into it, checking a
checkpoint's files against the sizes and hashes its state.json recorded, and loading weights for
later stages. Writing a checkpoint from a live trainer is `training.state`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from semgen_cli.errors import ConfigError, InputError, MismatchError
from semgen_cli.io.shards import check_file_record, load_tensors, read_json, write_text_atomic
from semgen_cli.training.config import TrainConfig
from semgen_cli.training.sharded import DCP_METADATA, is_sharded, read_sharded_tensors

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE = "state.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIM_FILE = "optimizer.pt"
METRICS = "metrics.jsonl"
_STEP_DIR = re.compile(r"^step-(\d{7,})$")
_TRAINER_FILES = (STATE, MODEL_FILE, EMA_FILE, OPTIM_FILE)  # STATE first: pruning un-commits first
STATE_VERSION = 1


def external_keys(model: torch.nn.Module) -> frozenset[str]:
    """State-dict keys of `model` whose weights a run does not store: those its submodules mark
    `external_weights` (the frozen base under LoRA adapters, `semgen_cli.lora`), read again from the
    source the run records. They are left out of checkpoints and the EMA, and not restored."""
    keys = set()
    for name, module in model.named_modules():
        keys.update(f"{name}.{k}" if name else k for k in getattr(module, "external_weights", ()))
    return frozenset(keys)


def _step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def _valid_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Committed checkpoint folders (those with state.json), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir() and (p / STATE).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The newest committed checkpoint folder of a run: the one `checkpoints/latest` names, or a
    newer committed one if the run stopped between committing a folder and updating `latest`.
    Folders without state.json (interrupted writes) are ignored. InputError if there is none."""
    run_dir = Path(run_dir)
    valid = _valid_checkpoints(run_dir)
    pointer = run_dir / CHECKPOINTS / LATEST
    if pointer.is_file():
        named = run_dir / CHECKPOINTS / pointer.read_text().strip()
        m = _STEP_DIR.match(named.name)
        if m and (named / STATE).is_file() and all(s <= int(m.group(1)) for s, _ in valid):
            return named
    if not valid:
        raise InputError(f"{run_dir}: no checkpoint to use (no {CHECKPOINTS}/step-*/ with {STATE})")
    return valid[-1][1]


def check_run_dir(out_dir: str | os.PathLike, resume: bool) -> Path | None:
    """Check `out_dir` before a step writes anything into it. Without resume, a folder holding
    checkpoints is refused (nothing already trained is overwritten); with resume, a folder with no
    checkpoint is an error. Returns the checkpoint to resume from, or None for a fresh run."""
    out_dir = Path(out_dir)
    root = out_dir / CHECKPOINTS
    has_steps = root.is_dir() and any(_STEP_DIR.match(p.name) for p in root.iterdir())
    if not resume:
        if has_steps:
            raise ConfigError(
                f"{out_dir} already holds a training run ({CHECKPOINTS}/); pass --resume to continue it "
                f"or choose a new --out"
            )
        return None
    if not _valid_checkpoints(out_dir):
        if root.is_dir():  # the run started but stopped before its first checkpoint was complete
            return None
        raise InputError(
            f"{out_dir}: nothing to resume from (no checkpoint in {root}); drop --resume to start a new run"
        )
    ckpt = latest_checkpoint(out_dir)
    try:
        verify_checkpoint(ckpt)  # before the step writes anything into the folder
    except InputError as err:
        earlier = [p for _, p in _valid_checkpoints(out_dir) if p != ckpt]
        hint = f" (deleting {ckpt} resumes from {earlier[-1].name})" if earlier else ""
        raise InputError(f"{err}{hint}") from None
    return ckpt


def load_checkpoint_weights(
    run_dir: str | os.PathLike, which: str = "ema", step: int | None = None
) -> dict[str, torch.Tensor]:
    """The weights of a run's checkpoint as a CPU state_dict (fp32 for "ema").

    `run_dir` is a run folder (its newest checkpoint, or `step` if given) or a checkpoint folder.
    `which` is "ema" (the EMA, what sampling should use) or "model" (the raw trained weights)."""
    if which not in ("ema", "model"):
        raise ConfigError(f'which={which!r}: must be "ema" or "model"')
    run_dir = Path(run_dir)
    if (run_dir / STATE).is_file() and step is None:
        ckpt = run_dir
    elif step is not None:
        ckpt = run_dir / CHECKPOINTS / _step_dir_name(step)
        if not (ckpt / STATE).is_file():
            have = ", ".join(str(s) for s, _ in _valid_checkpoints(run_dir)) or "none"
            raise InputError(f"{ckpt}: no checkpoint of step {step} (steps saved: {have})")
    else:
        ckpt = latest_checkpoint(run_dir)
    path = ckpt / (EMA_FILE if which == "ema" else MODEL_FILE)
    if not path.is_file() and is_sharded(ckpt):  # a sharded run's raw weights: read whole in this process
        verify_checkpoint(ckpt)
        return read_sharded_tensors(ckpt, "model" if which == "model" else "ema")
    if not path.is_file():
        hint = " (the run was trained with ema_decay=0; use the model weights)" if which == "ema" else ""
        raise InputError(f"{path}: missing{hint}")
    files = _state_files(ckpt)
    check_file_record(path, files.get(path.name), hashes=False)  # sizes and the header: cheap
    tensors = load_tensors(path)
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise InputError(f"{path}: tensor {bad} holds NaN or inf values; use an earlier checkpoint")
    return tensors


def _state_files(ckpt: Path) -> dict:
    """The {file: {"bytes", "sha256"}} a checkpoint's state.json records ({} for older ones)."""
    try:
        files = read_json(ckpt / STATE, "checkpoint state").get("files")
    except (InputError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


def _trained_with_ema(ckpt: Path) -> bool:
    try:
        return float(read_json(ckpt / STATE, "checkpoint state")["config"]["ema_decay"]) > 0
    except (InputError, KeyError, TypeError, ValueError):
        return True


def load_sampling_weights(run_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A run's newest weights for sampling: the EMA, or the raw model of a run trained without
    EMA. A run trained with an EMA whose ema.safetensors is gone is an error, not the raw weights."""
    run_dir = Path(run_dir)
    ckpt = run_dir if (run_dir / STATE).is_file() else latest_checkpoint(run_dir)
    if not (ckpt / EMA_FILE).is_file() and (ckpt / MODEL_FILE).is_file() and not _trained_with_ema(ckpt):
        return load_checkpoint_weights(ckpt, "model")
    if not (ckpt / EMA_FILE).is_file():
        raise InputError(f"{ckpt / EMA_FILE}: missing (the run was trained with an EMA, which sampling uses); restore the file or use an earlier checkpoint")
    return load_checkpoint_weights(ckpt, "ema")


def _check_model_keys(ckpt: Path, saved: dict[str, torch.Tensor], model_sd: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(model_sd) - set(saved))
    unexpected = sorted(set(saved) - set(model_sd))
    shapes = [
        f"{k} {tuple(saved[k].shape)} vs {tuple(model_sd[k].shape)}"
        for k in model_sd
        if k in saved and tuple(saved[k].shape) != tuple(model_sd[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if items:
                parts.append(f"{label}: {', '.join(items[:3])}{' …' if len(items) > 3 else ''}")
        raise MismatchError(
            f"{ckpt} does not fit this model ({'; '.join(parts)}); it was made with another preset or "
            f"model settings: resume with the same settings or use a new --out"
        )


_VERIFIED: dict[str, tuple] = {}
"""Checkpoint folders already hashed by this process, with the (size, mtime) of their files."""


def verify_checkpoint(ckpt: Path) -> dict[str, Any]:
    """The state.json of a checkpoint to resume from, after checking it and every file it needs
    against the bytes and sha256 it recorded: a missing, truncated or bit-flipped file is named
    before anything is loaded or written. Hashes once per process (a step checks before it writes
    its config.json, the trainer again before loading)."""
    state = _checked_state(ckpt)
    files = state.get("files") or {}
    ema_expected = EMA_FILE in files or (not files and float(state["config"].get("ema_decay", 0) or 0) > 0)
    needed = (MODEL_FILE, OPTIM_FILE) + ((EMA_FILE,) if ema_expected else ())
    if DCP_METADATA in files or (ckpt / DCP_METADATA).is_file():  # sharded: every file of the folder it recorded
        needed = tuple(sorted(set(files) | {DCP_METADATA}))
    stamp = tuple((f, (ckpt / f).stat().st_size, (ckpt / f).stat().st_mtime_ns) if (ckpt / f).is_file() else (f,) for f in needed)
    if _VERIFIED.get(str(ckpt)) != stamp:
        for f in needed:
            check_file_record(ckpt / f, files.get(f))
        _VERIFIED[str(ckpt)] = stamp
    return state


def _checked_state(ckpt: Path) -> dict[str, Any]:
    """state.json of a checkpoint, or an InputError naming it when it lacks what resume reads."""
    path = ckpt / STATE
    state = read_json(path, "checkpoint state")
    try:
        if not isinstance(state, dict):
            raise TypeError("not a JSON object")
        for key in ("step", "epoch", "position"):
            if isinstance(state[key], bool) or not isinstance(state[key], int) or state[key] < 0:
                raise TypeError(f"{key!r} is not a whole number")
        rng_keys = {"python", "numpy", "torch", "generator"}
        if not isinstance(state["rng"], list) or not state["rng"] or not all(isinstance(r, dict) and rng_keys <= set(r) for r in state["rng"]):
            raise TypeError("'rng' is not a list of RNG states")
        if not isinstance(state["config"], dict):
            raise TypeError("'config' is not an object")
        TrainConfig.from_dict(state["config"])
    except KeyError as err:
        raise InputError(f"{path}: not a semgen checkpoint state (no {err} key); resume from an earlier checkpoint") from None
    except (TypeError, ValueError, ConfigError) as err:
        raise InputError(f"{path}: not a semgen checkpoint state ({err}); resume from an earlier checkpoint") from None
    return state


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines for steps after `step` (they belong to the part of a run being redone)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if int(rec.get("step", 0)) <= step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


# ----------------------------------------------------------------------------- the loop

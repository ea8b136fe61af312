"""A live trainer's state to and from a checkpoint folder (the package docstring's "Files" and
"Resume"; DESIGN §4).

Owns gathering the full model, EMA and optimizer state (collective under FSDP), writing one
`checkpoints/step-N/` folder (weights, then `state.json` as its commit marker, then the rename,
then `latest`), pruning to `keep_last`, and putting model, optimizer, scheduler and EMA back from
a checkpoint, each file checked before it is used. The layout itself is `training.checkpoint`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from semgen_cli.errors import InputError
from semgen_cli.io.shards import file_record, follow_umask, load_tensors, write_json_atomic, write_text_atomic
from semgen_cli.training.checkpoint import (
    _TRAINER_FILES,
    EMA_FILE,
    LATEST,
    MODEL_FILE,
    OPTIM_FILE,
    STATE,
    _check_model_keys,
    _state_files,
    _valid_checkpoints,
    external_keys,
)
from semgen_cli.training.distributed import _first_nonfinite, _full, _like
from semgen_cli.training.ema import _EMA


def _gather_state(raw: nn.Module, optimizer: torch.optim.Optimizer, ema: _EMA | None, fsdp: bool,
                  model_only: bool = False) -> dict[str, Any]:
    """Full model / EMA / optimizer state on rank 0 (gathers shards under FSDP: collective); the
    model's external weights (a frozen LoRA base) are left out."""
    skip = external_keys(raw)
    if fsdp and model_only:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {"model": {k: v for k, v in full.items() if k not in skip}}
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = get_model_state_dict(raw, options=opts)
        optim_sd = get_optimizer_state_dict(raw, optimizer, options=opts)
    else:
        model_sd = {k: v.detach().cpu() for k, v in raw.state_dict().items()}
        optim_sd = optimizer.state_dict()
    model_sd = {k: v for k, v in model_sd.items() if k not in skip}
    ema_sd = {k: _full(v) for k, v in ema.state.items()} if ema else None
    return {"model": model_sd, "optim": optim_sd, "ema": ema_sd}


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    out, storages = {}, set()
    for k, v in tensors.items():
        v = v.contiguous()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in storages else v  # tied weights: safetensors refuses shared storage
        storages.add(ptr)
    save_file(out, str(path), metadata=metadata)
    follow_umask(path)


def _write_checkpoint(final: Path, step: int, states: dict[str, Any], scheduler_state: dict[str, Any],
                      ema_decay: float, record: Callable[[], dict[str, Any]]) -> None:
    """Write `final` (checkpoints/step-N/) on rank 0: the files into a `.tmp-PID` folder, its
    state.json (`record()`, called once the weights are written, plus the files' bytes and sha256)
    last, then the rename, then `latest`. The caller holds the run folder's lock."""
    name = final.name
    for stale in final.parent.glob("step-*.tmp*"):  # left by a killed save (this run holds the folder's lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f"{name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    meta = {"format": "pt", "step": str(step)}
    _save_safetensors(states["model"], tmp / MODEL_FILE, meta)
    if states["ema"] is not None:
        _save_safetensors(states["ema"], tmp / EMA_FILE, {**meta, "ema_decay": str(ema_decay)})
    torch.save({"optimizer": states["optim"], "scheduler": scheduler_state}, tmp / OPTIM_FILE)
    files = {f: file_record(tmp / f) for f in (MODEL_FILE, EMA_FILE, OPTIM_FILE) if (tmp / f).is_file()}
    write_json_atomic(tmp / STATE, {**record(), "files": files})  # the commit marker of the folder
    if final.exists():
        shutil.rmtree(final)  # an uncommitted leftover, or a step redone after resume
    os.replace(tmp, final)
    write_text_atomic(final.parent / LATEST, name + "\n")


def _prune(run_dir: Path, keep: int) -> None:
    """Keep the `keep` newest checkpoints (0: all): the trainer's files go, the caller's stay."""
    if keep <= 0:
        return
    for _, path in _valid_checkpoints(run_dir)[:-keep]:
        recorded = [f for f in _state_files(path) if "/" not in f and f not in ("", ".", "..")]  # a sharded folder's files
        for f in (*_TRAINER_FILES, *recorded):  # state.json first: the folder stops counting at once
            (path / f).unlink(missing_ok=True)
        if not any(path.iterdir()):
            path.rmdir()


def _restore_model(ckpt: Path, raw: nn.Module, fsdp: bool) -> None:
    saved = load_tensors(ckpt / MODEL_FILE)
    bad = _first_nonfinite(saved)
    if bad is not None:
        raise InputError(f"{ckpt / MODEL_FILE}: weight {bad} holds NaN or inf; resume from an earlier checkpoint")
    skip = external_keys(raw)  # a frozen LoRA base: not in the checkpoint, already loaded
    _check_model_keys(ckpt, saved, {k: v for k, v in raw.state_dict().items() if k not in skip})
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(raw, saved, options=StateDictOptions(full_state_dict=True, strict=not skip))
    else:
        raw.load_state_dict(saved, strict=not skip)


def _read_optimizer_file(ckpt: Path) -> dict[str, Any]:
    """optimizer.pt as {"optimizer", "scheduler"}, or an InputError naming what is wrong with it."""
    try:
        blob = torch.load(ckpt / OPTIM_FILE, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or not {"optimizer", "scheduler"} <= set(blob):
            raise ValueError("no optimizer and scheduler state in it")
    except Exception as err:  # a corrupt zip, a truncated pickle, a foreign file
        raise InputError(f"{ckpt / OPTIM_FILE}: not a readable optimizer state ({str(err).splitlines()[0][:160]})") from None
    bad = _first_nonfinite(blob["optimizer"].get("state", {}) if isinstance(blob["optimizer"], dict) else {})
    if bad is not None:
        raise InputError(f"{ckpt / OPTIM_FILE}: optimizer state {bad} holds NaN or inf; resume from an earlier checkpoint")
    return blob


def _restore_optimizer(ckpt: Path, raw: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                       fsdp: bool) -> None:
    blob = _read_optimizer_file(ckpt)
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(raw, optimizer, blob["optimizer"], options=StateDictOptions(full_state_dict=True))
    else:
        try:
            optimizer.load_state_dict(blob["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise InputError(f"{ckpt / OPTIM_FILE}: does not fit this model's optimizer ({str(err).splitlines()[0][:160]})") from None
    scheduler.load_state_dict(blob["scheduler"])


def _restore_ema(ckpt: Path, ema: _EMA) -> bool:
    """Put the checkpoint's EMA into `ema` (its shards placed like the current ones); False when
    the checkpoint has no ema.safetensors."""
    if not (ckpt / EMA_FILE).is_file():
        return False
    saved = load_tensors(ckpt / EMA_FILE)
    bad = _first_nonfinite(saved) or next((k for k in ema.state if k not in saved), None)
    if bad is not None:
        raise InputError(f"{ckpt / EMA_FILE}: {bad} is missing or not finite; resume from an earlier checkpoint")
    for k, ref in ema.state.items():
        ema.state[k] = _like(saved[k], ref).to(ref.dtype)
    return True

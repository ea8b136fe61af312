"""Sharded checkpoints of FSDP2 runs through `torch.distributed.checkpoint` (DCP; DESIGN §4).

Under `--fsdp` no rank gathers the model: each rank writes its own shards of the model, the
optimizer and the EMA into `checkpoints/step-N/` (`__R_0.distcp`, one per rank, and DCP's
`.metadata`, which records every tensor's global shape), and any number of processes reads them
back, each taking the slices it holds (DCP reshards: 2 ranks → 1 process, 2 → 4). Model and
optimizer state go through `torch.distributed.checkpoint.state_dict.get_state_dict` /
`set_state_dict`, which name every tensor by its unsharded FQN, so a plain, DDP or FSDP2 module
loads the same folder. Beside the shards, rank 0 writes `scheduler.json` and the one export
`generate` reads: `ema.safetensors` (the EMA gathered with `full_tensor`), or `model.safetensors`
for a run without an EMA. Every file is hashed into `state.json`'s `files`, so resume and
`semgen inspect --verify` check a DCP folder as they check a safetensors one.

The commit order is the same as for a safetensors checkpoint, and with `--async-save` it is what
makes the asynchronous write safe: the shards go into `step-N.tmp-PID/` (written by `dcp.save`, or
by `dcp.async_save` in a background thread while training continues); only after that write has
completed on every rank does rank 0 hash the files, write `state.json`, rename the folder to
`step-N/` and then point `checkpoints/latest` at it (`_PendingSave.commit`). A run stopped before
the commit leaves a `.tmp` folder, which is not a checkpoint and is removed by the next save.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from semgen_cli.errors import InputError, MismatchError
from semgen_cli.io.shards import file_record, write_json_atomic, write_text_atomic
from semgen_cli.training.distributed import _first_nonfinite

DCP_METADATA = ".metadata"
"""DCP's index of a sharded checkpoint; its presence makes a checkpoint folder a DCP one."""
SCHEDULER_FILE = "scheduler.json"


@contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns that it assumes one process whenever no process group is up; here that is meant."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def is_sharded(ckpt: Path) -> bool:
    """True when `ckpt` was written by DCP (it holds `.metadata`)."""
    return (Path(ckpt) / DCP_METADATA).is_file()


def _safe_planner():
    """DCP's default load planner, with the non-tensor entries (optimizer hyper-parameters)
    unpickled by `torch.load(weights_only=True)` instead of DCP's `weights_only=False`."""
    import io

    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, set_element  # the parent's helper
    from torch.distributed.checkpoint.planner import ReadItem

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafeLoadPlanner()


def sharded_state(raw: nn.Module, optimizer: torch.optim.Optimizer, ema_state: dict[str, torch.Tensor] | None
                  ) -> dict[str, Any]:
    """What DCP saves and loads: {"model", "optim"[, "ema"]}, each rank's tensors its own shards
    (DTensors under FSDP2, full tensors for a plain module), named by unsharded FQNs."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from semgen_cli.training.checkpoint import external_keys

    model_sd, optim_sd = get_state_dict(raw, optimizer)
    skip = external_keys(raw)  # a frozen LoRA base: read again from its own files, never checkpointed
    state: dict[str, Any] = {"model": {k: v for k, v in model_sd.items() if k not in skip}, "optim": optim_sd}
    if ema_state is not None:
        state["ema"] = ema_state
    return state


@dataclass
class _PendingSave:
    """A sharded checkpoint written (or being written) into `tmp`, not yet committed."""

    tmp: Path
    final: Path
    future: Any  # concurrent.futures.Future of dcp.async_save, or None for a synchronous save
    record: dict[str, Any]
    main: bool

    def commit(self, after: Callable[[], None] | None = None) -> Path:
        """Wait for the shards, then (rank 0) hash every file, write state.json, rename the folder
        and point `latest` at it, in that order; `after` runs on rank 0 once `latest` is written."""
        if self.future is not None:
            result = self.future.result()  # re-raises a failed background write
            upload = getattr(result, "upload_completion", None)
            if upload is not None:
                upload.result()
        if not self.main:
            return self.final
        files = {p.name: file_record(p) for p in sorted(self.tmp.iterdir()) if p.is_file()}
        write_json_atomic(self.tmp / "state.json", {**self.record, "files": files})  # the commit marker
        if self.final.exists():
            shutil.rmtree(self.final)  # an uncommitted leftover, or a step redone after resume
        os.replace(self.tmp, self.final)
        write_text_atomic(self.final.parent / "latest", self.final.name + "\n")
        if after is not None:
            after()
        return self.final


def start_sharded_save(final: Path, state: dict[str, Any], export: dict[str, torch.Tensor] | None, export_name: str,
                       export_meta: dict[str, str], scheduler_state: dict[str, Any], record: dict[str, Any],
                       main: bool, async_group: Any = None) -> _PendingSave:
    """Write a sharded checkpoint into `final`'s temp folder on every rank (collective): rank 0
    first clears stale temp folders and writes the export and scheduler.json; then DCP writes the
    shards, in the background when `async_group` (a gloo group of its own, so the background
    collectives never interleave with training's) is given. Commit with `.commit()`."""
    import torch.distributed.checkpoint as dcp

    from semgen_cli.training.state import _save_safetensors

    active = dist.is_available() and dist.is_initialized()
    name = [f"{final.name}.tmp-{os.getpid()}"]
    if main:
        for stale in final.parent.glob("step-*.tmp*"):  # left by a killed save (this run holds the lock)
            shutil.rmtree(stale, ignore_errors=True)
    if active:
        dist.broadcast_object_list(name, src=0)  # every rank writes into rank 0's folder
    tmp = final.with_name(name[0])
    if main:
        tmp.mkdir(parents=True)
        if export is not None:
            _save_safetensors(export, tmp / export_name, export_meta)
        write_json_atomic(tmp / SCHEDULER_FILE, scheduler_state)
    if active:
        dist.barrier()
    if async_group is not None:
        future = dcp.async_save(state, checkpoint_id=str(tmp), process_group=async_group)
    else:
        with _quiet_single_process():
            dcp.save(state, checkpoint_id=str(tmp), no_dist=not active)
        future = None
    return _PendingSave(tmp, final, future, record, main)


def _dcp_errors() -> tuple[type[BaseException], ...]:
    """What a DCP read raises: its CheckpointException (a BaseException, wrapping every rank's
    error) and ordinary exceptions."""
    from torch.distributed.checkpoint.api import CheckpointException

    return (Exception, CheckpointException)


def _drop_unsaved_optimizer_state(state: dict[str, Any], saved: set[str]) -> None:
    """Parameters that never received a gradient have no optimizer state in the checkpoint (AdamW
    creates it at a parameter's first update), while a fresh optimizer prepared for loading has
    state for every parameter: those entries are dropped, so the parameters stay without state as
    in the uninterrupted run."""
    per_param = state["optim"].get("state", {})
    for fqn in list(per_param):
        if any(f"optim.state.{fqn}.{k}" not in saved for k in per_param[fqn]):
            del per_param[fqn]


def _load_error(ckpt: Path, err: BaseException) -> Exception:
    text = str(err).replace("\n", " ")
    if "Missing key" in text or "Size mismatch" in text or "size mismatch" in text:
        return MismatchError(f"{ckpt} does not fit this model ({text[:200]}); it was made with other model "
                             "settings: resume with the same settings or use a new --out")
    return InputError(f"{ckpt}: the sharded checkpoint cannot be read ({type(err).__name__}: {text[:200]}); "
                      "resume from an earlier checkpoint")


def restore_sharded(ckpt: Path, raw: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    ema_state: dict[str, torch.Tensor] | None) -> bool:
    """Model, optimizer, scheduler and (when given and saved) the EMA, read into this process's
    own shards from a DCP folder written by any number of ranks. Returns False when `ema_state`
    was given but the checkpoint has no EMA (the caller restarts it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    try:
        saved = set(dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata)
    except _dcp_errors() as err:
        raise _load_error(ckpt, err) from None
    has_ema = any(k.startswith("ema.") for k in saved)
    state = sharded_state(raw, optimizer, ema_state if has_ema else None)
    unexpected = sorted(k[len("model."):] for k in saved if k.startswith("model.") and k[len("model."):] not in state["model"])
    if unexpected:
        raise MismatchError(f"{ckpt} does not fit this model (unexpected: {', '.join(unexpected[:3])}"
                            f"{' …' if len(unexpected) > 3 else ''}); it was made with other model settings: "
                            "resume with the same settings or use a new --out")
    _drop_unsaved_optimizer_state(state, saved)
    active = dist.is_available() and dist.is_initialized()
    try:
        with _quiet_single_process():
            dcp.load(state, checkpoint_id=str(ckpt), planner=_safe_planner(), no_dist=not active)
    except _dcp_errors() as err:  # DCP wraps a rank's failure in a CheckpointException
        raise _load_error(ckpt, err) from None
    bad = _first_nonfinite({"model": state["model"], "ema": state.get("ema") or {}}, local=True)
    if bad is not None:
        raise InputError(f"{ckpt}: {bad} holds NaN or inf; resume from an earlier checkpoint")
    # strict=False: the parameters `_drop_unsaved_optimizer_state` left without optimizer state
    # (the model's own keys were all read above: DCP refuses a key the checkpoint lacks)
    set_state_dict(raw, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=StateDictOptions(strict=False))
    try:
        scheduler.load_state_dict(json.loads((ckpt / SCHEDULER_FILE).read_text()))
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise InputError(f"{ckpt / SCHEDULER_FILE}: not a readable scheduler state ({err}); "
                         "resume from an earlier checkpoint") from None
    if has_ema and ema_state is not None:
        ema_state.update(state["ema"])
    return has_ema or ema_state is None


def read_sharded_tensors(ckpt: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The full tensors under `prefix.` ("model" or "ema") of a DCP folder, read in this one
    process whatever the number of ranks that wrote it (to export or inspect a sharded run)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        meta = dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    except _dcp_errors() as err:
        raise _load_error(ckpt, err) from None
    p = prefix + "."
    out = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()
           if k.startswith(p) and isinstance(m, TensorStorageMetadata)}
    if not out:
        raise InputError(f"{ckpt}: the sharded checkpoint holds no {prefix} weights")
    try:
        with _quiet_single_process():
            dcp.load(out, checkpoint_id=str(ckpt), planner=_safe_planner(), no_dist=True)
    except _dcp_errors() as err:
        raise _load_error(ckpt, err) from None
    return {k[len(p):]: v for k, v in out.items()}

"""`train()`, the one entry of the package, and the loop that drives a `_Trainer`.

Owns the run folder's lock and the process group around a run, resuming or seeding, the loop
itself (step, log a `metrics.jsonl` line, save and call back when due, as the package docstring's
"Checkpoints" says), the SIGINT handler (the first Ctrl-C finishes the step and saves, a second
aborts) and what a KeyboardInterrupt may still save, which depends on the trainer's `Phase`.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from semgen_cli.errors import ConfigError
from semgen_cli.reporting import Reporter
from semgen_cli.training.checkpoint import CHECKPOINTS, METRICS, _step_dir_name, _truncate_metrics, check_run_dir
from semgen_cli.training.config import TrainConfig, TrainResult
from semgen_cli.training.distributed import _init_distributed
from semgen_cli.training.rng import _rng_state, _seed_everything, _set_rng_state
from semgen_cli.training.trainer import Phase, _Trainer


def train(
    model: nn.Module,
    dataset: Any,
    collate: Callable[[list[Any]], Any],
    loss_fn: Callable[[nn.Module, Any, torch.Generator], tuple[torch.Tensor, dict[str, float]]],
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    reporter: Reporter | None = None,
    on_checkpoint: Callable[[int, Path, nn.Module], None] | None = None,
    resume_hint: str | None = None,
    fsdp: bool = False,
    fsdp_modules: Callable[[nn.Module], list[nn.Module]] | None = None,
    device: str | torch.device | None = None,
    before_save: Callable[[nn.Module, dict[str, torch.Tensor] | None], None] | None = None,
    trackers: Sequence[Any] = (),
    validate: Callable[[int, nn.Module], dict[str, float]] | None = None,
) -> TrainResult:
    """Train `model` for `cfg.steps` optimiser steps on `dataset`, writing into `out_dir`.

    model:         ONE nn.Module holding everything trained (its `requires_grad` parameters) and
                   saved (its whole state_dict). The trainer moves it to the device.
    dataset:       map-style (`__len__`, `__getitem__`); with `takes_seed = True` it is indexed by
                   `Sample(index, seed)` (see the module docstring).
    collate:       list of items -> batch (tensors, or dicts/lists/tuples of them: moved to device).
    loss_fn:       (model, batch, generator) -> (mean loss over the micro-batch, {name: float}).
    on_checkpoint: (step, ckpt_dir, ema_model) on rank 0 after a checkpoint at a sample step
                   (see `sample_every`); ema_model is an eval copy with EMA weights (the model's
                   weights if the EMA is off). The RNGs are restored afterwards.
    resume_hint:   the command that resumes this run, printed when it stops early.
    before_save:   (model, ema_state or None) on every rank before each checkpoint is written; it
                   may change both in place (what must be saved with the weights, e.g. statistics
                   of a trained part). Not with fsdp (the weights are sharded).
    trackers:      objects with `log(row, step)` (`semgen_cli.tracking`): rank 0 hands each one every
                   metrics.jsonl row as it is written. A dict returned by on_checkpoint (e.g.
                   {"sample_seconds": s}) becomes a row of its own at that step (with elapsed_s).
    validate:      (step, model) -> {} or {"val_loss": …}, after every optimiser step on every rank
                   (eval mode, no grad, the training precision, RNGs restored); what it returns joins
                   that step's metrics row (written even off the log_every cadence).
    fsdp:          shard with FSDP2 `fully_shard`, per module of `fsdp_modules(model)` (default: the
                   entries of every nn.ModuleList), then the root. Needs a torchrun launch.
                   Checkpoints are then sharded DCP folders (`training.sharded`), written in the
                   background with `cfg.async_save`.
    device:        default cuda:LOCAL_RANK when CUDA is available, else cpu.
    """
    from semgen_cli.io.lock import hold

    if cfg.async_save and not fsdp:
        raise ConfigError("--async-save needs --fsdp (it writes sharded checkpoints in the background); add --fsdp or drop --async-save")
    out_dir = Path(out_dir)
    with hold(out_dir, "run folder"):  # a no-op when the step calling us holds it already
        return _train_locked(model, dataset, collate, loss_fn, cfg, out_dir, resume, reporter, on_checkpoint,
                             resume_hint, fsdp, fsdp_modules, device, before_save, trackers, validate)


def _train_locked(model, dataset, collate, loss_fn, cfg, out_dir, resume, reporter, on_checkpoint, resume_hint, fsdp,
                  fsdp_modules, device, before_save, trackers=(), validate=None) -> TrainResult:
    ckpt = check_run_dir(out_dir, resume)
    if resume and ckpt is None and reporter is not None:
        reporter.warn(f"{out_dir}: no complete checkpoint (the run stopped during its first save); starting from step 0")
    d = _init_distributed()
    try:
        trainer = _Trainer(
            d, model, dataset, collate, loss_fn, cfg, out_dir, reporter, on_checkpoint, resume_hint, fsdp,
            fsdp_modules, device, before_save=before_save, trackers=trackers, validate=validate,
        )
        result = _run(trainer, ckpt)
    except BaseException:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()  # no barrier: the other ranks may never reach it
        raise
    if d.owns_group and dist.is_initialized():
        # Every rank is done with its collectives before any rank tears its gloo/NCCL pairs down
        # (a rank leaving early while a peer still talks on a pair can abort that peer at exit).
        dist.barrier()
        dist.destroy_process_group()
    return result


def _run(t: _Trainer, ckpt: Path | None) -> TrainResult:
    """Resume from `ckpt` (or seed a fresh run), step up to `cfg.steps` or a stop, and say what
    was done."""
    cfg = t.cfg
    t.t0 = time.perf_counter()
    metrics_path = t.out / METRICS
    resumed_from = None
    if ckpt is not None:
        t.load(ckpt)
        t.last_ckpt = ckpt
        resumed_from = t.step
        if t.step >= cfg.steps:
            t.reporter.info(f"{t.out} already reached step {t.step} of {cfg.steps}; nothing to do")
            return TrainResult(t.step, None, t.out, ckpt, metrics_path, 0.0, resumed_from)
        t.reporter.info(f"resuming {t.out} from {ckpt.name}")
    else:
        _seed_everything(cfg.seed + t.d.rank)
        t.generator.manual_seed(cfg.seed + t.d.rank)
    if t.d.main:
        (t.out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, t.step)

    t.reporter.start("train", total=cfg.steps, unit="steps")
    if t.step:
        t.reporter.advance("train", t.step)
    interrupted = _steps(t, metrics_path)
    return _finish(t, ckpt, metrics_path, resumed_from, interrupted)


def _steps(t: _Trainer, metrics_path: Path) -> bool:
    """Optimiser steps until `cfg.steps` or a requested stop; True when a KeyboardInterrupt cut in."""
    metrics = open(metrics_path, "a") if t.d.main else None
    restore_sigint = _install_sigint(t)
    batches = t._micro_batches()
    try:
        while t.step < t.cfg.steps:
            _step_and_log(t, batches, metrics)
            if t.stop_requested:
                break
            _save_if_due(t, metrics)
    except KeyboardInterrupt:
        # Ctrl-C outside the SIGINT handler (a second Ctrl-C, a non-main thread, a callback).
        _after_keyboard_interrupt(t)
        return True
    finally:
        batches.close()  # shuts DataLoader workers down
        restore_sigint()
        if metrics:
            metrics.close()
    return False


def _step_and_log(t: _Trainer, batches: Iterator[Any], metrics: IO[str] | None) -> None:
    t_step = time.perf_counter()
    t.snap = (t.stream.epoch, t.stream.position, _rng_state(t.generator))
    t.phase = Phase.STEP
    row = t._one_step(batches)
    t.phase = Phase.DONE
    dt = time.perf_counter() - t_step
    t.last_loss = row["loss"]
    held_out = t.held_out(t.step)  # {"val_loss": …} at a --val-every step; every rank joins
    if t.d.main:
        _log(t, row, dt, metrics, held_out)


def _log(t: _Trainer, row: dict[str, float], dt: float, metrics: IO[str], held_out: dict[str, float]) -> None:
    """A metrics.jsonl line every `log_every` steps, at the last and with a held-out loss; the
    progress bar every step."""
    cfg, s = t.cfg, t.step
    if s % cfg.log_every == 0 or s == cfg.steps or held_out:
        rec = {
            "step": s, "loss": row["loss"], "lr": row["lr"], "grad_norm": row["grad_norm"],
            "samples_per_s": cfg.batch_size / dt,
            "elapsed_s": t.elapsed_before + (time.perf_counter() - t.t0),
            **{k: v for k, v in row.items() if k not in ("loss", "lr", "grad_norm")}, **held_out,
        }
        t.write_row(metrics, rec)
    t.reporter.advance("train", 1, loss=row["loss"], lr=row["lr"], **{"it/s": 1.0 / dt})


def _save_if_due(t: _Trainer, metrics: IO[str] | None) -> None:
    """A checkpoint every `save_every` steps, at every `sample_every` step and at the last step;
    the callback at sample steps (at every checkpoint when `sample_every` is 0)."""
    cfg, s = t.cfg, t.step
    sample_due = t.on_checkpoint is not None and (
        (cfg.sample_every > 0 and s % cfg.sample_every == 0) or s == cfg.steps
    )
    if (cfg.save_every > 0 and s % cfg.save_every == 0) or s == cfg.steps or sample_due:
        t.phase = Phase.SAVE
        path = t.save()
        if sample_due or (cfg.sample_every == 0 and t.on_checkpoint is not None):
            sampled = t._callback(path)  # e.g. {"sample_seconds": …}: a row of its own
            if sampled and metrics:
                t.write_row(metrics, {"step": s, **sampled, "elapsed_s": t.elapsed_before + (time.perf_counter() - t.t0)})
        t.phase = Phase.DONE


def _after_keyboard_interrupt(t: _Trainer) -> None:
    """Ask for a save where the state is whole; otherwise keep the last checkpoint."""
    if t.phase == Phase.STEP and not t.d.active:
        # Nothing was updated yet: roll the cursor and RNGs back to the step boundary.
        epoch, position, rng = t.snap
        t.stream.epoch, t.stream.position = epoch, position
        _set_rng_state(rng, t.generator)
        t.optimizer.zero_grad(set_to_none=True)
        t.stop_requested = True
    elif t.phase == Phase.DONE and not t.d.active:
        t.stop_requested = True
    else:
        # Mid-update, mid-save or under DDP: the state may be torn, so save nothing.
        t.reporter.info(f"stopped during step {t.step + 1}; the last saved checkpoint is kept")


def _finish(t: _Trainer, ckpt: Path | None, metrics_path: Path, resumed_from: int | None,
            interrupted: bool) -> TrainResult:
    """Save where a stop was requested, tell how to resume, and report the run."""
    if t.stop_requested:
        interrupted = True
        if t.last_ckpt is None or t.last_ckpt.name != _step_dir_name(t.step):
            t.save("stopped early")
        t.reporter.info(f"stopped early at step {t.step} of {t.cfg.steps}")
    t.finish_save()  # an asynchronous save still in flight commits before the run returns
    if interrupted and t.resume_hint:
        t.reporter.info(f"resume with: {t.resume_hint}")
    t.reporter.finish("train")
    seconds = time.perf_counter() - t.t0
    ckpt_path = t.last_ckpt if t.last_ckpt is not None else ckpt
    return TrainResult(t.step, t.last_loss, t.out, ckpt_path, metrics_path, seconds, resumed_from, interrupted)


def _install_sigint(t: _Trainer) -> Callable[[], None]:
    """First Ctrl-C: finish this step, save, return. Second: KeyboardInterrupt at once."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    # Installed even when the process started with SIGINT ignored (`cmd &` in a script): a
    # `kill -INT` (or a Ctrl-C reaching the script's jobs) then stops it cleanly, saved, exit 130.
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if t.stop_requested:
            raise KeyboardInterrupt
        t.stop_requested = True
        t.reporter.info("stopping after this step (Ctrl-C again to abort without saving)")

    signal.signal(signal.SIGINT, handler)
    return lambda: signal.signal(signal.SIGINT, previous)

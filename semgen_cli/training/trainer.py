"""The state of one training run and one optimiser step (the package docstring is the contract).

Owns the `_Trainer`: the model wrapped for DDP or sharded by FSDP2, AdamW with its schedule, the
EMA, the step generator and the data cursor; one optimiser step (gradient accumulation, bf16
autocast, clipping, the stop at a non-finite loss or gradient, the update); saving and restoring
all of it through `training.state`; the `on_checkpoint` callback with an EMA copy; and the
`Phase` the step is in, which tells a Ctrl-C what it may safely do. `training.loop` drives it.
"""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.reporting import NULL
from semgen_cli.training.checkpoint import (
    CHECKPOINTS,
    EMA_FILE,
    MODEL_FILE,
    STATE,
    STATE_VERSION,
    _step_dir_name,
    external_keys,
    verify_checkpoint,
)
from semgen_cli.training.config import _BOOKKEEPING, TrainConfig
from semgen_cli.training.data import _hash_seed, _KeySampler, _Stream, _to_device
from semgen_cli.training.distributed import (
    _default_device,
    _first_nonfinite,
    _fsdp_no_sync,
    _full,
    _fully_shard,
    _is_dtensor,
)
from semgen_cli.training.ema import _EMA
from semgen_cli.training.optim import _lr_factor, _param_groups
from semgen_cli.training.rng import _rng_preserved, _rng_state, _seed_everything, _set_rng_state
from semgen_cli.training.sharded import (
    _PendingSave,
    is_sharded,
    restore_sharded,
    sharded_state,
    start_sharded_save,
)
from semgen_cli.training.state import (
    _gather_state,
    _prune,
    _restore_ema,
    _restore_model,
    _restore_optimizer,
    _write_checkpoint,
)


class Phase(Enum):
    """Where the loop is, so a Ctrl-C knows what it may do: STEP (forward/backward, nothing
    updated yet) -> UPDATE (optimizer, scheduler, EMA) -> DONE; SAVE while a checkpoint is written."""

    STEP = "step"
    UPDATE = "update"
    DONE = "done"
    SAVE = "save"


class _Trainer:
    """State of one run; `train()` is its only public face."""

    def __init__(self, d, model, dataset, collate, loss_fn, cfg, out_dir, reporter, on_checkpoint, resume_hint,
                 fsdp, fsdp_modules, device, before_save=None, trackers=(), validate=None):
        self.cfg, self.out = cfg, Path(out_dir)
        self.pending: tuple[_PendingSave, str] | None = None  # a sharded save not yet committed
        # --async-save: DCP's background collectives get a gloo group of their own (created by every rank)
        self.async_group = dist.new_group(backend="gloo") if cfg.async_save and fsdp and d.active else None
        self.before_save = before_save
        self.trackers, self.validate = trackers, validate
        self.loss_fn, self.collate, self.dataset = loss_fn, collate, dataset
        self.reporter = reporter or NULL
        self.on_checkpoint, self.resume_hint = on_checkpoint, resume_hint
        self.d = d
        if not self.d.main:
            self.reporter = NULL
        self.device = torch.device(device) if device is not None else _default_device(self.d)
        per = cfg.batch_size // cfg.grad_accum
        if per % self.d.world:
            raise ConfigError(
                f"--batch-size {cfg.batch_size}: must be divisible by --grad-accum {cfg.grad_accum} × "
                f"{self.d.world} processes"
            )
        if len(dataset) == 0:
            raise InputError("the training dataset is empty")
        self._wrap(model, fsdp, fsdp_modules)
        self._build_optimiser()

        self.step, self.elapsed_before = 0, 0.0
        self.t0 = time.perf_counter()  # reset when the run starts
        seeded = bool(getattr(dataset, "takes_seed", False))
        lengths = getattr(dataset, "lengths", None)
        if lengths is not None and len(lengths) != len(dataset):
            raise ValueError(f"dataset.lengths has {len(lengths)} entries for {len(dataset)} samples")
        self.stream = _Stream(len(dataset), cfg.seed, seeded, lengths=lengths, batch=cfg.batch_size)
        self.last_ckpt: Path | None = None
        self.last_loss: float | None = None  # of the last step this call ran
        self.snap: tuple[int, int, dict[str, Any]] | None = None  # cursor and RNGs where the step began
        self.stop_requested = False
        self.phase = Phase.DONE

    def _wrap(self, model: nn.Module, fsdp: bool, fsdp_modules) -> None:
        """The model on its device, wrapped for DDP or sharded by FSDP2; under FSDP a CPU template
        is kept first for callbacks (the live weights are sharded)."""
        self.fsdp = fsdp
        self.raw = model
        self.template = copy.deepcopy(model).cpu() if (fsdp and self.on_checkpoint) else None
        if fsdp:
            self.model = _fully_shard(model, fsdp_modules, self.d, self.device)
        else:
            model.to(self.device)
            self.model = model
            if self.d.active:
                self.model = nn.parallel.DistributedDataParallel(
                    model, device_ids=[self.device.index] if self.device.type == "cuda" else None
                )
        params = [p for p in self.raw.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no trainable parameters (everything is frozen)")
        self.params = params

    def _build_optimiser(self) -> None:
        """AdamW, its LR schedule, the EMA, the step generator and the autocast choice."""
        cfg = self.cfg
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.raw, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(cfg))
        self.ema = _EMA(self.raw, cfg.ema_decay, external_keys(self.raw)) if cfg.ema_decay > 0 else None
        self.generator = torch.Generator(device=self.device)
        self.bf16 = cfg.precision == "bf16" and (
            self.device.type == "cpu" or (self.device.type == "cuda" and torch.cuda.is_bf16_supported())
        )
        if cfg.precision == "bf16" and not self.bf16:
            self.reporter.warn(f"bf16 is not supported on {self.device}; training in fp32")

    # ---- checkpoints

    def save(self, reason: str = "") -> Path:
        """Write checkpoints/step-N/ (state.json last, then rename), then `latest`, then prune."""
        if self.before_save is not None:
            with _rng_preserved(self.generator):
                self.before_save(self.raw, self.ema.state if self.ema else None)
        final = self.out / CHECKPOINTS / _step_dir_name(self.step)
        if self.fsdp:
            return self._save_sharded(final, reason)
        states = _gather_state(self.raw, self.optimizer, self.ema, self.fsdp)
        self._refuse_nonfinite(_first_nonfinite({"model": states["model"], "ema": states["ema"] or {}}))
        all_rng = self._all_rngs()
        if self.d.main:
            _write_checkpoint(final, self.step, states, self.scheduler.state_dict(), self.cfg.ema_decay,
                              lambda: self._state_record(all_rng))
            _prune(self.out, self.cfg.keep_last)
            self.reporter.info(f"saved {final}{f' ({reason})' if reason else ''}")
        if self.d.active:
            dist.barrier()
        self.last_ckpt = final
        return final

    def _all_rngs(self) -> list[Any]:
        """Every rank's RNG states, for state.json (collective)."""
        rng = _rng_state(self.generator)
        if not self.d.active:
            return [rng]
        all_rng = [None] * self.d.world
        dist.all_gather_object(all_rng, rng)
        return all_rng

    def _save_sharded(self, final: Path, reason: str) -> Path:
        """FSDP: each rank writes its shards with DCP (`training.sharded`); rank 0 exports the
        gathered EMA (or model) as safetensors for sampling. Committed at once, or with
        --async-save when the background write is done (`finish_save`)."""
        self.finish_save()  # an earlier asynchronous save commits first
        state = sharded_state(self.raw, self.optimizer, self.ema.state if self.ema else None)
        self._refuse_nonfinite(_first_nonfinite({"model": state["model"], "ema": state.get("ema") or {}}, local=True))
        if self.ema:  # the export generate reads: full tensors, gathered (collective) for it only
            export, name = {k: _full(v) for k, v in self.ema.state.items()}, EMA_FILE
        else:
            export, name = _gather_state(self.raw, self.optimizer, None, True, model_only=True)["model"], MODEL_FILE
        meta = {"format": "pt", "step": str(self.step), **({"ema_decay": str(self.cfg.ema_decay)} if self.ema else {})}
        record = self._state_record(self._all_rngs())
        pending = start_sharded_save(final, state, export if self.d.main else None, name, meta,
                                     self.scheduler.state_dict(), record, self.d.main, self.async_group)
        del export, state
        self.pending = (pending, reason)
        if self.async_group is None:
            self.finish_save()
        self.last_ckpt = final
        return final

    def finish_save(self) -> None:
        """Commit the sharded save in flight (wait for its shards on every rank, then rank 0 writes
        state.json, renames the folder, writes `latest` and prunes); nothing when none is."""
        if self.pending is None:
            return
        (pending, reason), self.pending = self.pending, None
        pending.commit(after=lambda: _prune(self.out, self.cfg.keep_last))
        if self.d.main:
            self.reporter.info(f"saved {pending.final}{f' ({reason})' if reason else ''}")
        if self.d.active:
            dist.barrier()

    def _refuse_nonfinite(self, bad: str | None) -> None:
        """Never commit a non-finite state (a diverged update, a bit flip in memory)."""
        if self.d.active:  # FSDP gathers the full state on rank 0 only: every rank stops with it
            flag = torch.tensor([float(bad is not None)], device=self.device)
            dist.all_reduce(flag)
            bad = bad or ("(on rank 0)" if flag.item() > 0 else None)
        if bad is not None:
            raise ConfigError(f"step {self.step}: weight {bad} is not finite after the update (the training diverged); "
                              f"nothing was saved ({self._kept()}); lower --lr")

    def _kept(self) -> str:
        """What a stop leaves behind, for its message."""
        if self.last_ckpt is not None:
            return f"the last checkpoint {self.last_ckpt.name} is kept"
        return "no checkpoint was written"

    def _state_record(self, all_rng: list[Any]) -> dict[str, Any]:
        """state.json of the checkpoint being written (its `files` are added by the writer)."""
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "epoch": self.stream.epoch,
            "position": self.stream.position,
            "elapsed_s": self.elapsed_before + (time.perf_counter() - self.t0),
            "world_size": self.d.world,
            "fingerprint": self.cfg.fingerprint(),
            "config": self.cfg.to_dict(),
            "rng": all_rng,
        }

    def load(self, ckpt: Path) -> None:
        """Model, optimizer, scheduler, EMA, data cursor and RNGs from `ckpt`, checked first."""
        state = verify_checkpoint(ckpt)
        if is_sharded(ckpt):  # written by DCP under --fsdp, read into this run's own layout and world size
            restored_ema = restore_sharded(ckpt, self.raw, self.optimizer, self.scheduler,
                                           self.ema.state if self.ema else None)
        else:
            _restore_model(ckpt, self.raw, self.fsdp)
            _restore_optimizer(ckpt, self.raw, self.optimizer, self.scheduler, self.fsdp)
            restored_ema = self.ema is None or _restore_ema(ckpt, self.ema)
        if self.ema and not restored_ema:
            self.reporter.warn(f"{ckpt} has no {EMA_FILE}; the EMA restarts from the current weights")
            self.ema = _EMA(self.raw, self.cfg.ema_decay, external_keys(self.raw))
        self.step = int(state["step"])
        self.stream.epoch, self.stream.position = int(state["epoch"]), int(state["position"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self._restore_rngs(ckpt, state["rng"])
        self._warn_changed_settings(ckpt, TrainConfig.from_dict(state["config"]))

    def _restore_rngs(self, ckpt: Path, rngs: list[dict[str, Any]]) -> None:
        """This rank's RNGs as saved; reseeded (with a warning) when the world size changed."""
        if len(rngs) == self.d.world:
            try:
                _set_rng_state(rngs[self.d.rank], self.generator)
            except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
                raise InputError(f"{ckpt / STATE}: its RNG state cannot be restored ({type(err).__name__}: {str(err)[:120]}); resume from an earlier checkpoint") from None
            return
        self.reporter.warn(
            f"{ckpt} was written by {len(rngs)} processes, this run has {self.d.world}: RNGs are reseeded, "
            "so losses will not match an uninterrupted run exactly"
        )
        _seed_everything(_hash_seed(self.cfg.seed, self.d.rank, self.step))
        self.generator.manual_seed(_hash_seed(self.cfg.seed, self.d.rank, self.step, 1))

    def _warn_changed_settings(self, ckpt: Path, old: TrainConfig) -> None:
        if old.fingerprint() != self.cfg.fingerprint():
            changed = [k for k, v in self.cfg.to_dict().items() if k not in _BOOKKEEPING and old.to_dict()[k] != v]
            self.reporter.warn(f"settings changed since {ckpt.name}: {', '.join(changed)}; the run continues with the new ones")
        if self.cfg.schedule != "constant" and old.steps != self.cfg.steps:
            self.reporter.warn(
                f"--steps changed from {old.steps} to {self.cfg.steps}: the {self.cfg.schedule} LR curve is "
                "stretched from here on"
            )

    # ---- callbacks

    def _ema_model(self, full: dict[str, torch.Tensor] | None) -> nn.Module:
        m = copy.deepcopy(self.template if self.fsdp else self.raw)
        if full is not None:
            ref = m.state_dict()
            m.load_state_dict({k: v.to(dtype=ref[k].dtype) for k, v in full.items()}, strict=not external_keys(m))
        return m.to(self.device).eval().requires_grad_(False)

    def _callback(self, ckpt: Path) -> dict[str, Any] | None:
        """on_checkpoint on rank 0 with an EMA copy; what it returns (e.g. {"sample_seconds": s})
        becomes a metrics row of its own."""
        if self.on_checkpoint is None:
            return None
        self.finish_save()  # the callback writes into the committed folder
        row = None
        # Full weights for the copy; gathering FSDP shards is collective, so every rank joins.
        if self.ema:
            full_ema = {k: _full(v) for k, v in self.ema.state.items()}
        elif self.fsdp:
            full_ema = _gather_state(self.raw, self.optimizer, self.ema, self.fsdp, model_only=True)["model"]
        else:
            full_ema = None
        if self.d.main:
            with _rng_preserved(self.generator), torch.no_grad():
                ema_model = self._ema_model(full_ema)
                row = self.on_checkpoint(self.step, ckpt, ema_model)
                del ema_model
        if self.d.active:
            dist.barrier()
        return row if self.d.main and isinstance(row, dict) else None

    def held_out(self, step: int) -> dict[str, float]:
        """`validate(step, model)` on every rank (an FSDP forward is collective), in eval mode under the
        training precision, the RNGs untouched; {} when there is none or it is not due."""
        if self.validate is None:
            return {}
        self.raw.eval()
        if self.fsdp:  # the root's own parameters (those outside the blocks) are gathered for calls that bypass its forward
            self.raw.unshard()
        try:
            with _rng_preserved(self.generator), torch.no_grad(), \
                    torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                return self.validate(step, self.raw)
        finally:
            if self.fsdp:
                self.raw.reshard()

    def write_row(self, metrics, rec: dict[str, Any]) -> None:
        """One metrics.jsonl line (the source of truth), then the same row to every tracker."""
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        for tracker in self.trackers:
            tracker.log(rec, rec["step"])

    # ---- one optimiser step

    def _micro_batches(self) -> Iterator[Any]:
        cfg, d = self.cfg, self.d
        if cfg.num_workers == 0:
            for keys in self.stream.micro_batches(cfg.batch_size, cfg.grad_accum, d.rank, d.world):
                yield keys, self.collate([self.dataset[k] for k in keys])
        else:
            sampler = _KeySampler(self.stream, cfg.batch_size, cfg.grad_accum, d.rank, d.world)
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=sampler, collate_fn=self.collate, num_workers=cfg.num_workers,
                pin_memory=self.device.type == "cuda",
            )
            # The loader runs ahead on its own copy of the cursor; ours advances in step with use.
            ours = self.stream.micro_batches(cfg.batch_size, cfg.grad_accum, d.rank, d.world)
            for batch in loader:
                yield next(ours), batch

    def _one_step(self, batches: Iterator[Any]) -> dict[str, float]:
        """Forward/backward over the step's micro-batches, then clip, update, schedule and EMA;
        the loss and the caller's fields come back averaged over micro-steps and ranks."""
        self.model.train()
        # 1. Forward and backward over the micro-batches (gradients synchronised on the last one).
        loss_sum, field_sums, culprits = self._accumulate(batches)

        # 2. Clip (the norm is logged either way), step, schedule, EMA.
        lr = self.optimizer.param_groups[0]["lr"]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if _is_dtensor(grad_norm):
            grad_norm = grad_norm.full_tensor()
        self._stop_if_nonfinite(culprits, float(grad_norm))  # before the update: no weight sees it
        self.phase = Phase.UPDATE
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema:  # the EMA copies the weights until step ema_start, then averages
            self.ema.update(self.raw, copy=self.step + 1 < self.cfg.ema_start)
        self.step += 1

        # 3. Loss and fields averaged over micro-steps and ranks; a Ctrl-C on any rank stops all.
        loss, fields = self._average(loss_sum, field_sums)
        return {"loss": loss, "lr": lr, "grad_norm": float(grad_norm), **fields}

    def _accumulate(self, batches: Iterator[Any]) -> tuple[torch.Tensor, dict[str, float], list[str] | None]:
        """Each micro-batch forward and backward (gradients summed, synchronised on the last one);
        returns the summed loss and fields, and the samples to blame at a non-finite loss."""
        cfg = self.cfg
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        field_sums: dict[str, float] = {}
        culprits: list[str] | None = None  # set at the first non-finite loss: the samples to blame
        for k in range(cfg.grad_accum):
            last = k == cfg.grad_accum - 1
            keys, batch = next(batches)
            batch = _to_device(batch, self.device)
            with self._sync(last), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss, fields = self.loss_fn(self.model, batch, self.generator)
                if culprits is None and not bool(torch.isfinite(loss.detach()).all()):
                    culprits = self._nonfinite_samples(keys, batch)
                (loss / cfg.grad_accum).backward()  # mean over the step's micro-batches
            loss_sum += loss.detach().double()
            for name, v in (fields or {}).items():
                field_sums[name] = field_sums.get(name, 0.0) + float(v)
        return loss_sum, field_sums, culprits

    def _average(self, loss_sum: torch.Tensor, field_sums: dict[str, float]) -> tuple[float, dict[str, float]]:
        """Loss and fields averaged over micro-steps and ranks; `stop_requested` if any rank asked."""
        names = sorted(field_sums)
        packed = torch.tensor(
            [loss_sum.item(), *(field_sums[n] for n in names), float(self.stop_requested)],
            dtype=torch.float64, device=self.device,
        )
        if self.d.active:
            dist.all_reduce(packed)
        packed[:-1] /= self.cfg.grad_accum * self.d.world
        self.stop_requested = bool(packed[-1].item() > 0)
        values = packed[:-1].tolist()
        return values[0], dict(zip(names, values[1:], strict=True))

    def _nonfinite_samples(self, keys: list[Any], batch: Any) -> list[str]:
        """The samples of a micro-batch whose input tensors hold NaN or inf (by the dataset's
        `sample_id(key)` where it has one), [] if the inputs are finite."""
        rows: set[int] = set()

        def scan(x: Any) -> None:
            if isinstance(x, torch.Tensor):
                if x.is_floating_point() and x.dim() and x.shape[0] == len(keys):
                    rows.update(torch.nonzero(~torch.isfinite(x.reshape(len(keys), -1)).all(1)).flatten().tolist())
            elif isinstance(x, dict):
                for v in x.values():
                    scan(v)
            elif isinstance(x, (list, tuple)):
                for v in x:
                    scan(v)

        scan(batch)
        name = getattr(self.dataset, "sample_id", None)
        return [str(name(keys[i])) if name else f"item {int(getattr(keys[i], 'index', keys[i]))}" for i in sorted(rows)]

    def _stop_if_nonfinite(self, culprits: list[str] | None, grad_norm: float) -> None:
        """Stop the run (a one-line error, nothing saved from this step) at a non-finite loss or
        gradient; under DDP every rank stops together."""
        bad = culprits is not None or not math.isfinite(grad_norm)
        if self.d.active:
            flag = torch.tensor([float(bad)], device=self.device)
            dist.all_reduce(flag)
            bad = bool(flag.item() > 0)
        if not bad:
            return
        self.finish_save()  # every rank stops here together: an asynchronous save in flight is committed, then kept
        step = self.step + 1
        last = self._kept()
        self.optimizer.zero_grad(set_to_none=True)
        if culprits:
            shown = ", ".join(culprits[:5]) + (" …" if len(culprits) > 5 else "")
            raise InputError(f"step {step}: the loss is not finite; NaN or inf in the data of sample(s) {shown}; "
                             f"nothing from this step was saved ({last}); re-extract or remove those samples")
        what = "loss" if culprits is not None else f"gradient (norm {grad_norm})"
        raise ConfigError(f"step {step}: the {what} is not finite (the training diverged); nothing from this step was "
                          f"saved ({last}); lower --lr, keep --grad-clip on, or check the data")

    def _sync(self, last: bool):
        if last:
            return nullcontext()
        if isinstance(self.model, nn.parallel.DistributedDataParallel):
            return self.model.no_sync()
        if self.fsdp:
            return _fsdp_no_sync(self.raw)
        return nullcontext()

"""What a training run is asked to do and what it reports back.

Owns `TrainConfig` (the settings every trainable step shares, checked in `__post_init__`, strict
about unknown keys, DESIGN §5 "config flows one way"), its `fingerprint` (the settings that change
the numbers a run produces), `TrainResult` and `Sample`, the key a `takes_seed` dataset is indexed
with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from semgen_cli.config import from_dict_strict
from semgen_cli.errors import ConfigError

# Settings added after runs were first recorded, at the value that reproduces those runs: left out
# of the fingerprint at that value, so an older run's fingerprint stays what it was.
_ADDED: dict[str, Any] = {"ema_start": 0}


def resolve_precision() -> str:
    """The precision "auto" stands for: bf16 where CUDA supports it, else fp32."""
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


# Fields that do not change the numbers a run produces; they may differ on resume silently.
_BOOKKEEPING = ("steps", "save_every", "keep_last", "log_every", "sample_every", "num_workers", "async_save")


@dataclass
class TrainConfig:
    """How to train; shared by every trainable step. Unknown keys and bad values are errors."""

    steps: int = 1000
    """Total optimiser steps of the run (a resumed run continues up to this number)."""
    batch_size: int = 8
    """Global samples per optimiser step, over all ranks and accumulation micro-steps."""
    grad_accum: int = 1
    """Micro-steps per optimiser step; each rank's micro-batch is batch_size / (world × grad_accum)."""
    lr: float = 1e-4
    """Peak learning rate of AdamW."""
    warmup_steps: int = 0
    """Steps of linear warm-up from lr/warmup_steps to lr."""
    schedule: str = "constant"
    """LR after warm-up: "constant", "cosine" or "linear" (decay to lr × min_lr_ratio at `steps`)."""
    min_lr_ratio: float = 0.0
    """Final LR of the cosine/linear schedule as a fraction of lr."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay, applied to matrices only (not norms, biases, embeddings)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping; the norm is logged either way)."""
    ema_decay: float = 0.999
    """Decay of the fp32 EMA of the weights (0 disables the EMA and ema.safetensors)."""
    ema_start: int = 0
    """Step from which the EMA averages; before it the EMA copies the weights (0: from the start)."""
    precision: str = "auto"
    """"auto", "fp32" or "bf16" (autocast to bfloat16 where the device supports it; weights stay
    fp32). "auto" resolves when the config is made: bf16 where CUDA with bf16 is available, else
    fp32; the resolved value is what a run records."""
    save_every: int = 500
    """Save a checkpoint every this many steps (0: only at the end); the last step always saves."""
    keep_last: int = 3
    """Keep this many newest checkpoints (0: keep all)."""
    log_every: int = 1
    """Write a metrics.jsonl line every this many steps (1: every step, the last step always)."""
    sample_every: int = 0
    """Call on_checkpoint every this many steps, saving a checkpoint there (0: at every checkpoint)."""
    seed: int = 0
    """Seed of the data order, per-sample seeds, the step generator and the global RNGs."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0: load in the training process)."""
    async_save: bool = False
    """With --fsdp: write each checkpoint's shards in the background while training goes on
    (torch.distributed.checkpoint.async_save); state.json and `latest` follow once it is written."""


    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        self._check_whole_numbers()
        self._check_optimiser()
        if not 0.0 <= self.ema_decay < 1.0:
            raise self._bad("ema_decay", "must be in [0, 1) (0 disables the EMA)")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise self._bad("precision", 'must be "auto", "fp32" or "bf16"')
        if self.precision == "auto":
            self.precision = resolve_precision()

    def _bad(self, name: str, why: str) -> ConfigError:
        value = getattr(self, name)
        return ConfigError(f"--{name.replace('_', '-')} {value!r}: {why}")

    def _check_whole_numbers(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise self._bad(name, "must be a whole number ≥ 1")
        for name in ("warmup_steps", "save_every", "keep_last", "sample_every", "seed", "num_workers", "ema_start"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise self._bad(name, "must be a whole number ≥ 0")
        if self.batch_size % self.grad_accum:
            raise self._bad("batch_size", f"must be divisible by --grad-accum {self.grad_accum}")

    def _check_optimiser(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise self._bad("lr", "must be a positive number")
        if self.schedule not in ("constant", "cosine", "linear"):
            raise self._bad("schedule", 'must be "constant", "cosine" or "linear"')
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise self._bad("min_lr_ratio", "must be between 0 and 1")
        if not self.weight_decay >= 0:
            raise self._bad("weight_decay", "must be ≥ 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise self._bad("betas", "must be two numbers in [0, 1)")
        if not self.grad_clip >= 0:
            raise self._bad("grad_clip", "must be ≥ 0 (0 disables clipping)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a config file's dict; unknown keys are an error."""
        return from_dict_strict(cls, d, "training setting")

    def fingerprint(self) -> str:
        """Hash of the settings that change the numbers (not steps, save/log cadence, workers)."""
        absent = object()
        d = {k: v for k, v in self.to_dict().items() if k not in _BOOKKEEPING and _ADDED.get(k, absent) != v}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    """What a run did. `loss` is the last step's loss (None if no step ran in this call)."""

    step: int
    loss: float | None
    out_dir: Path
    checkpoint: Path | None
    metrics: Path
    seconds: float
    resumed_from: int | None = None
    interrupted: bool = False


class Sample(NamedTuple):
    """The key a `takes_seed = True` dataset is indexed with: which item, and a seed for its
    randomness that depends only on (seed, epoch, position in the data stream)."""

    index: int
    seed: int

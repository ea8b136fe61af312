"""The fp32 exponential moving average of the trained weights (what sampling uses).

Owns the EMA state (`ema.safetensors` in each checkpoint) and its update after every optimiser
step; under FSDP2 each rank averages its own shard.
"""

from __future__ import annotations

import torch
from torch import nn


class _EMA:
    """fp32 exponential moving average of a module's floating-point state (parameters averaged,
    buffers copied). Works on DTensor shards under FSDP2 (each rank averages its own shard). The
    `skip` keys (a frozen LoRA base, `checkpoint.external_keys`) are not kept: they never change."""

    def __init__(self, model: nn.Module, decay: float, skip: frozenset[str] = frozenset()) -> None:
        self.decay = decay
        self.names = {n for n, _ in model.named_parameters()}
        self.state = {
            k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items() if k not in skip
        }

    @torch.no_grad()
    def update(self, model: nn.Module, copy: bool = False) -> None:
        """One step of the average; `copy` (before `ema_start`) sets the EMA to the weights."""
        for k, v in model.state_dict().items():
            if k not in self.state:
                continue
            if k in self.names and v.is_floating_point() and not copy:
                self.state[k].lerp_(v.detach().float(), 1.0 - self.decay)  # ema ← d·ema + (1−d)·p
            else:
                self.state[k].copy_(v)

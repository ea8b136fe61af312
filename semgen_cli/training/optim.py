"""The optimiser's parameter groups and its learning-rate schedule.

Owns which parameters get weight decay (matrices only) and the LR multiplier of each optimiser
step: linear warm-up, then "constant", "cosine" or "linear" decay to `lr × min_lr_ratio`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from torch import nn

from semgen_cli.training.config import TrainConfig


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: norms, biases (1-D) and embedding tables are not decayed."""
    no_decay_ids = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.weight is not None
    }
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or id(p) in no_decay_ids else decay).append(p)
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    return groups


def _lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """LR multiplier for optimiser step s (0-based): linear warm-up, then the schedule."""

    def factor(s: int) -> float:
        if s < cfg.warmup_steps:
            return (s + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, (s - cfg.warmup_steps) / span)
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - progress
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape

    return factor

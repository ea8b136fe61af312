"""Guidance-parallel sampling: the two passes of classifier-free guidance on two ranks.

Paper §3.3: both stages sample with CFG, ``v = v_u + s (v_c - v_u)``, i.e. two DiT passes per
Euler step. :func:`semgen_cli.flow.euler_sample` batches them (cond first, then uncond); wrapped
in :class:`GuidanceSplit`, rank 0 of a pair runs the conditional half of that batch, rank 1 the
unconditional half, and one ``all_gather`` in the pair's group gives both ranks the whole batch
back, so the Euler update (and everything after it) is the same on both ranks, bit for bit.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class GuidanceSplit:
    """A DiT (or any ``model(x, t, **cond)``) whose batched CFG calls are split over a pair of ranks.

    A call whose batch is odd (no CFG, or a pair that could not be batched) runs whole on every
    rank. ``bytes_sent`` counts what this rank sends per call (its half of the prediction)."""

    def __init__(self, model, group=None) -> None:
        self.model = model
        self.group = group
        self.index = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        if self.size != 2:
            raise ValueError(f"guidance-parallel needs a pair of ranks, got a group of {self.size}")
        self.bytes_sent = 0

    def __getattr__(self, name):  # config, dtype, ... of the wrapped model
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        B = x.shape[0]
        if B % 2:
            return self.model(x, t, **cond)
        half = B // 2
        mine = slice(self.index * half, (self.index + 1) * half)

        def part(v):
            return v[mine] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == B else v

        out = self.model(x[mine], t[mine], **{k: part(v) for k, v in cond.items()}).contiguous()  # (B/2, ...)
        parts = [torch.empty_like(out) for _ in range(2)]
        dist.all_gather(parts, out, group=self.group)
        self.bytes_sent += out.numel() * out.element_size()
        return torch.cat(parts)  # (B, ...): cond half, then uncond half

"""Running one training over several processes: DDP and FSDP2 under `torchrun`.

Owns the process group (joined from RANK/WORLD_SIZE/LOCAL_RANK, gloo on CPU), the rank helpers
(`_Dist`), the default device, FSDP2 sharding of a model and its no-sync context, and moving
tensors between full CPU copies and DTensor shards (a checkpoint always holds full tensors).
See the package docstring, "DDP / FSDP" (DESIGN §1: the training steps run under `torchrun`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from semgen_cli.errors import ConfigError


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _init_distributed() -> _Dist:
    """Join the process group torchrun describes (RANK/WORLD_SIZE/LOCAL_RANK); gloo on CPU."""
    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), local, owns_group=True)


def _default_device(d: _Dist) -> torch.device:
    return torch.device("cuda", d.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def _is_dtensor(t: Any) -> bool:
    return type(t).__name__ == "DTensor"


def _full(t: torch.Tensor) -> torch.Tensor:
    """A full CPU tensor (gathers a DTensor shard: every rank must call this in the same order)."""
    if _is_dtensor(t):
        t = t.full_tensor()
    return t.detach().cpu()


def _first_nonfinite(tensors: dict[str, Any], *, local: bool = False) -> str | None:
    """The name of the first floating tensor (of a nested state) holding NaN or inf, else None.
    A DTensor is checked whole (gathered), or with `local=True` only this rank's shard (a sharded
    save, where each rank checks what it writes)."""
    for k, v in tensors.items():
        if isinstance(v, dict):
            inner = _first_nonfinite(v, local=local)
            if inner is not None:
                return f"{k}.{inner}"
        elif isinstance(v, (list, tuple)):
            inner = _first_nonfinite(dict(enumerate(v)), local=local)
            if inner is not None:
                return f"{k}.{inner}"
        elif isinstance(v, torch.Tensor) and v.is_floating_point():
            seen = (v.to_local() if _is_dtensor(v) else v) if local else _full(v)
            if not torch.isfinite(seen).all():
                return str(k)
    return None


def _like(src: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`src` (a full CPU tensor) placed like `ref` (device, and sharding if a DTensor)."""
    if _is_dtensor(ref):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(src.to(ref.device_mesh.device_type), ref.device_mesh, ref.placements)
    return src.to(ref.device)



def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place, so it is itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _fully_shard(model: nn.Module, fsdp_modules: Callable[[nn.Module], list[nn.Module]] | None, d: _Dist,
                 device: torch.device) -> nn.Module:
    """Shard `model` in place with FSDP2: each module of `fsdp_modules(model)` (default: the
    entries of every nn.ModuleList), then the root."""
    from torch.distributed.fsdp import fully_shard

    if not d.active and not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("--fsdp needs a distributed launch (torchrun --nproc_per_node=K ...)")
    model.to(device)
    blocks = list(fsdp_modules(model)) if fsdp_modules else _default_blocks(model)
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    return model


@contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _default_blocks(model: nn.Module) -> list[nn.Module]:
    """FSDP units when the caller names none: the entries of every nn.ModuleList (the blocks)."""
    return [m for ml in model.modules() if isinstance(ml, nn.ModuleList) for m in ml]

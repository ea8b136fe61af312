"""The order in which a run sees its data, as a function of (seed, epoch, position) only.

Owns the endless stream of per-epoch permutations and its cursor (the data state a checkpoint
keeps), length grouping for datasets with `lengths`, per-sample seeds for `takes_seed` datasets,
the DataLoader batch sampler that follows the cursor, and moving a collated batch to the device.
The contract is in the package docstring ("Data order", "Length grouping", "Per-sample randomness").
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator, Sequence

import torch

from semgen_cli.training.config import Sample


def _hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


GROUP_BATCHES = 16
"""Batches per length-sorted chunk of an epoch (datasets with `lengths`)."""


def group_by_length(perm: list[int], lengths: Sequence[int], batch: int, g: torch.Generator) -> list[int]:
    """`perm` cut into chunks of GROUP_BATCHES batches; each chunk sorted by length (longest first),
    cut into batches, and those batches shuffled with `g`. Returns a permutation of `perm`."""
    out: list[int] = []
    size = batch * GROUP_BATCHES
    for start in range(0, len(perm), size):
        chunk = sorted(perm[start : start + size], key=lambda i: -lengths[i])  # stable: ties keep the random order
        batches = [chunk[k : k + batch] for k in range(0, len(chunk), batch)]
        out += [i for b in torch.randperm(len(batches), generator=g).tolist() for i in batches[b]]
    return out


class _Stream:
    """The endless stream of per-epoch permutations; its state is the cursor (epoch, position)."""

    def __init__(self, n: int, seed: int, seeded: bool, epoch: int = 0, position: int = 0,
                 lengths: Sequence[int] | None = None, batch: int = 1) -> None:
        self.n, self.seed, self.seeded = n, seed, seeded
        self.epoch, self.position = epoch, position
        self.lengths, self.batch = lengths, batch
        self._perm: list[int] | None = None
        self._perm_epoch = -1

    def _permutation(self) -> list[int]:
        if self._perm_epoch != self.epoch:
            g = torch.Generator().manual_seed(_hash_seed(self.seed, self.epoch))
            perm = torch.randperm(self.n, generator=g).tolist()
            if self.lengths is not None:
                perm = group_by_length(perm, self.lengths, self.batch, g)
            self._perm, self._perm_epoch = perm, self.epoch
        return self._perm  # type: ignore[return-value]

    def take(self, k: int) -> list[Any]:
        """The next k keys (ints, or Sample for seeded datasets), advancing the cursor."""
        keys = []
        for _ in range(k):
            idx = self._permutation()[self.position]
            keys.append(Sample(idx, _hash_seed(self.seed, self.epoch, self.position)) if self.seeded else idx)
            self.position += 1
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
        return keys

    def micro_batches(self, global_batch: int, accum: int, rank: int, world: int) -> Iterator[list[Any]]:
        """Endless: each micro-step's keys for `rank` (its share of the global micro-slice)."""
        while True:
            for _ in range(accum):
                yield self.take(global_batch // accum)[rank::world]

    def copy(self) -> "_Stream":
        return _Stream(self.n, self.seed, self.seeded, self.epoch, self.position, self.lengths, self.batch)


class _KeySampler:
    """batch_sampler for a DataLoader: yields this rank's micro-batch keys from a cursor on."""

    def __init__(self, stream: _Stream, batch: int, accum: int, rank: int, world: int) -> None:
        self.stream, self.args = stream, (batch, accum, rank, world)

    def __iter__(self) -> Iterator[list[Any]]:
        return self.stream.copy().micro_batches(*self.args)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a NamedTuple
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch

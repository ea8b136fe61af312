"""One train loop for every trainable step (fit-compressor, train-latent, train-semantic).

The trainer owns everything that is the same for all of them: AdamW with a warm-up and LR
schedule, gradient accumulation, gradient clipping, bf16 autocast, an fp32 EMA of the weights,
DDP/FSDP2 under `torchrun`, `metrics.jsonl`, checkpoints and an exact `--resume`. A step module
owns only its model, its dataset and a `loss_fn`.

Usage (a step module)::

    from semgen_cli.training import Sample, TrainConfig, check_run_dir, train, write_json_atomic

    class Clips(torch.utils.data.Dataset):
        takes_seed = True                            # __getitem__ receives Sample(index, seed)
        def __len__(self): return len(self.shards)
        def __getitem__(self, key: Sample):
            g = torch.Generator().manual_seed(key.seed)        # random crop replays on resume
            x = self.shards.load(key.index)["latents"]       # (F, C, H, W)
            f0 = int(torch.randint(0, x.shape[0] - 8 + 1, (), generator=g))
            return x[f0 : f0 + 8]

    class Step(nn.Module):                           # ONE module: DDP/FSDP wrap it whole
        def __init__(self, dit, compressor): ...
        def forward(self, x, generator):             # the whole loss inside forward (see below)
            t = torch.rand(x.shape[0], generator=generator, device=x.device)
            ...
            return loss, {"kl": kl.item()}

    def loss_fn(model, batch, generator):            # model is Step, or its DDP wrapper
        return model(batch, generator)               # -> (loss tensor, {name: float})

    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    check_run_dir(out, resume=args.resume)           # refuse BEFORE writing config.json
    write_json_atomic(out / "config.json", {"train": cfg.to_dict(), ...})
    result = train(Step(dit, comp), Clips(...), torch.stack, loss_fn, cfg, out,
                   resume=args.resume, reporter=reporter,
                   on_checkpoint=lambda step, ckpt_dir, ema: write_samples(ema, ckpt_dir),
                   resume_hint=f"semgen train-latent {data} --out {out} ... --resume")
    # later stages:  load_checkpoint_weights(out, which="ema")  -> state_dict

Design (the contract the step modules rely on):

- **Batches.** `batch_size` is the *global* number of samples per optimiser step, over all ranks
  and accumulation micro-steps; each rank's micro-batch is `batch_size / (world × grad_accum)`.
  Changing `grad_accum` or the number of GPUs therefore changes memory, never which samples a
  step sees. `loss_fn` must return the *mean* loss over its micro-batch.
- **Data order.** Samples come from an endless stream of per-epoch permutations; epoch `e` is
  `torch.randperm(len(dataset))` under a generator seeded by `(seed, e)`. The data cursor is
  `(epoch, position)` in that stream, so resume needs no dataset state. A step takes the next
  `batch_size` samples (crossing into the next epoch if needed; any dataset size works); micro-step
  `k` takes its slice, and rank `r` takes `slice[r::world]`.
- **Length grouping.** A dataset with a `lengths` attribute (one int per sample, e.g. the time
  tokens of a clip) gets its epoch permutation cut into chunks of `GROUP_BATCHES` batches, each
  chunk sorted by length and its batches put in a random order: a batch then holds clips of
  similar length, so padding a 4 s clip to a minute does not waste most of the compute (the
  Hugging Face `group_by_length` idea). Still a function of `(seed, e)` only, so resume is exact.
- **Per-sample randomness.** A dataset whose class sets `takes_seed = True` is indexed with
  `Sample(index, seed)` instead of an int; `seed` is a 63-bit hash of `(seed, epoch, position)`,
  so random crops, frame windows or noise made in `__getitem__` replay identically after a resume,
  and do not depend on the number of ranks or workers. Other datasets get plain ints.
- **The step's randomness.** `loss_fn(model, batch, generator)` gets a `torch.Generator` on the
  training device, seeded from `seed + rank`, saved and restored with each checkpoint: draw
  timesteps and noise from it. (Its draws differ between ranks, as they must; randomness that
  should not depend on the world size belongs in the dataset.) The global python/numpy/torch RNGs
  are seeded from `seed + rank` too and restored on resume (dropout replays).
- **DDP / FSDP.** `loss_fn` receives the wrapped model, so compute the whole loss inside ONE
  `model(...)` call (give your module a `forward` that returns the loss): calling submodules of a
  DDP/FSDP model directly bypasses its gradient synchronisation. Wrap several trained modules
  (a DiT and a compressor fine-tuned jointly) in one `nn.Module`; the trainer trains all its
  parameters with `requires_grad=True` and saves its whole `state_dict()`. Under DDP every
  trainable parameter must take part in the loss each step (freeze the ones that do not).
- **Files** in `out_dir` (rank 0 writes, DESIGN §4):
  `metrics.jsonl` (one line per logged step: step, loss, lr, grad_norm, samples_per_s,
  elapsed_s, then the caller's fields; loss and fields averaged over micro-steps and ranks), and
  `checkpoints/step-0000100/` with `model.safetensors`, `ema.safetensors` (fp32, when
  `ema_decay > 0`), `optimizer.pt` (holds the scheduler too; loaded with `weights_only=True`) and
  `state.json` (step, data cursor, RNG states per rank, config, fingerprint, and the bytes and
  sha256 of each weight file under `files`), written last into `step-0000100.tmp-PID/`, which is
  then renamed; `checkpoints/latest` names the newest folder and is written after it. A folder
  without `state.json` is not a checkpoint. Files follow the umask. The folder is locked for the
  run (`semgen_cli.io.lock`): a second writer is refused, naming this one.
- **Checkpoints** are saved every `save_every` steps, at every `sample_every` step (so samples
  sit beside the weights that made them), at the last step, and when Ctrl-C stops the run (the
  first Ctrl-C or `kill -INT`, even of a process started with SIGINT ignored, finishes the current
  step, saves and returns `interrupted=True`, which the CLI turns into exit 130; a second one
  aborts). `keep_last` prunes older ones: the trainer's files go, files the caller wrote into the
  folder (validation mp4s) stay.
- **Non-finite numbers** stop the run: a NaN/inf loss or gradient norm raises a one-line error
  naming the step (and, where the inputs of the batch are not finite, the samples, by the
  dataset's optional `sample_id(key)`) before the update; a save refuses non-finite weights. No
  checkpoint is ever written from such a state.
- **Resume** restores model, EMA, optimizer, scheduler, RNGs and the data cursor: N steps +
  resume + M steps gives bit-identical losses to N+M steps on CPU. Raising `steps` on resume is
  allowed; with a "cosine"/"linear" schedule that changes the LR curve (the trainer warns).
  Before anything is loaded or written, the checkpoint's files are checked against the sizes and
  hashes its state.json recorded, so a missing, truncated or bit-flipped file is named. A run
  stopped before its first checkpoint was complete (a `checkpoints/` folder, no checkpoint in it)
  resumes from step 0.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from semgen_cli.config import from_dict_strict
from semgen_cli.errors import ConfigError, InputError, MismatchError
from semgen_cli.io.shards import (
    check_file_record,
    file_record,
    follow_umask,
    load_tensors,
    read_json,
    write_json_atomic,
    write_text_atomic,
)
from semgen_cli.reporting import NULL, Reporter

__all__ = [
    "Sample",
    "TrainConfig",
    "TrainResult",
    "train",
    "check_run_dir",
    "latest_checkpoint",
    "load_checkpoint_weights",
    "unwrap",
    "read_json",
    "write_json_atomic",
]

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE = "state.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIM_FILE = "optimizer.pt"
METRICS = "metrics.jsonl"
_STEP_DIR = re.compile(r"^step-(\d{7,})$")
_TRAINER_FILES = (STATE, MODEL_FILE, EMA_FILE, OPTIM_FILE)  # STATE first: pruning un-commits first
STATE_VERSION = 1

# Fields that do not change the numbers a run produces; they may differ on resume silently.
_BOOKKEEPING = ("steps", "save_every", "keep_last", "log_every", "sample_every", "num_workers")


# ----------------------------------------------------------------------------- config


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
    precision: str = "fp32"
    """"fp32" or "bf16" (autocast to bfloat16 where the device supports it; weights stay fp32)."""
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

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)

        def bad(name: str, why: str) -> ConfigError:
            value = getattr(self, name)
            return ConfigError(f"--{name.replace('_', '-')} {value!r}: {why}")

        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "must be a whole number ≥ 1")
        for name in ("warmup_steps", "save_every", "keep_last", "sample_every", "seed", "num_workers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(name, "must be a whole number ≥ 0")
        if self.batch_size % self.grad_accum:
            raise bad("batch_size", f"must be divisible by --grad-accum {self.grad_accum}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise bad("lr", "must be a positive number")
        if self.schedule not in ("constant", "cosine", "linear"):
            raise bad("schedule", 'must be "constant", "cosine" or "linear"')
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise bad("min_lr_ratio", "must be between 0 and 1")
        if not self.weight_decay >= 0:
            raise bad("weight_decay", "must be ≥ 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise bad("betas", "must be two numbers in [0, 1)")
        if not self.grad_clip >= 0:
            raise bad("grad_clip", "must be ≥ 0 (0 disables clipping)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise bad("ema_decay", "must be in [0, 1) (0 disables the EMA)")
        if self.precision not in ("fp32", "bf16"):
            raise bad("precision", 'must be "fp32" or "bf16"')

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
        d = {k: v for k, v in self.to_dict().items() if k not in _BOOKKEEPING}
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


# ----------------------------------------------------------------------------- run folders


def _step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def _valid_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Committed checkpoint folders (those with state.json), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir() and (p / STATE).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The newest committed checkpoint folder of a run: the one `checkpoints/latest` names, or a
    newer committed one if the run stopped between committing a folder and updating `latest`.
    Folders without state.json (interrupted writes) are ignored. InputError if there is none."""
    run_dir = Path(run_dir)
    valid = _valid_checkpoints(run_dir)
    pointer = run_dir / CHECKPOINTS / LATEST
    if pointer.is_file():
        named = run_dir / CHECKPOINTS / pointer.read_text().strip()
        m = _STEP_DIR.match(named.name)
        if m and (named / STATE).is_file() and all(s <= int(m.group(1)) for s, _ in valid):
            return named
    if not valid:
        raise InputError(f"{run_dir}: no checkpoint to use (no {CHECKPOINTS}/step-*/ with {STATE})")
    return valid[-1][1]


def check_run_dir(out_dir: str | os.PathLike, resume: bool) -> Path | None:
    """Check `out_dir` before a step writes anything into it. Without resume, a folder holding
    checkpoints is refused (nothing already trained is overwritten); with resume, a folder with no
    checkpoint is an error. Returns the checkpoint to resume from, or None for a fresh run."""
    out_dir = Path(out_dir)
    root = out_dir / CHECKPOINTS
    has_steps = root.is_dir() and any(_STEP_DIR.match(p.name) for p in root.iterdir())
    if not resume:
        if has_steps:
            raise ConfigError(
                f"{out_dir} already holds a training run ({CHECKPOINTS}/); pass --resume to continue it "
                f"or choose a new --out"
            )
        return None
    if not _valid_checkpoints(out_dir):
        if root.is_dir():  # the run started but stopped before its first checkpoint was complete
            return None
        raise InputError(
            f"{out_dir}: nothing to resume from (no checkpoint in {root}); drop --resume to start a new run"
        )
    ckpt = latest_checkpoint(out_dir)
    try:
        verify_checkpoint(ckpt)  # before the step writes anything into the folder
    except InputError as err:
        earlier = [p for _, p in _valid_checkpoints(out_dir) if p != ckpt]
        hint = f" (deleting {ckpt} resumes from {earlier[-1].name})" if earlier else ""
        raise InputError(f"{err}{hint}") from None
    return ckpt


def load_checkpoint_weights(
    run_dir: str | os.PathLike, which: str = "ema", step: int | None = None
) -> dict[str, torch.Tensor]:
    """The weights of a run's checkpoint as a CPU state_dict (fp32 for "ema").

    `run_dir` is a run folder (its newest checkpoint, or `step` if given) or a checkpoint folder.
    `which` is "ema" (the EMA, what sampling should use) or "model" (the raw trained weights)."""
    if which not in ("ema", "model"):
        raise ConfigError(f'which={which!r}: must be "ema" or "model"')
    run_dir = Path(run_dir)
    if (run_dir / STATE).is_file() and step is None:
        ckpt = run_dir
    elif step is not None:
        ckpt = run_dir / CHECKPOINTS / _step_dir_name(step)
        if not (ckpt / STATE).is_file():
            have = ", ".join(str(s) for s, _ in _valid_checkpoints(run_dir)) or "none"
            raise InputError(f"{ckpt}: no checkpoint of step {step} (steps saved: {have})")
    else:
        ckpt = latest_checkpoint(run_dir)
    path = ckpt / (EMA_FILE if which == "ema" else MODEL_FILE)
    if not path.is_file():
        hint = " (the run was trained with ema_decay=0; use the model weights)" if which == "ema" else ""
        raise InputError(f"{path}: missing{hint}")
    files = _state_files(ckpt)
    check_file_record(path, files.get(path.name), hashes=False)  # sizes and the header: cheap
    tensors = load_tensors(path)
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise InputError(f"{path}: tensor {bad} holds NaN or inf values; use an earlier checkpoint")
    return tensors


def _state_files(ckpt: Path) -> dict:
    """The {file: {"bytes", "sha256"}} a checkpoint's state.json records ({} for older ones)."""
    try:
        files = read_json(ckpt / STATE, "checkpoint state").get("files")
    except (InputError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


def _trained_with_ema(ckpt: Path) -> bool:
    try:
        return float(read_json(ckpt / STATE, "checkpoint state")["config"]["ema_decay"]) > 0
    except (InputError, KeyError, TypeError, ValueError):
        return True


def load_sampling_weights(run_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A run's newest weights for sampling: the EMA, or the raw model of a run trained without
    EMA. A run trained with an EMA whose ema.safetensors is gone is an error, not the raw weights."""
    run_dir = Path(run_dir)
    ckpt = run_dir if (run_dir / STATE).is_file() else latest_checkpoint(run_dir)
    if not (ckpt / EMA_FILE).is_file() and (ckpt / MODEL_FILE).is_file() and not _trained_with_ema(ckpt):
        return load_checkpoint_weights(ckpt, "model")
    if not (ckpt / EMA_FILE).is_file():
        raise InputError(f"{ckpt / EMA_FILE}: missing (the run was trained with an EMA, which sampling uses); restore the file or use an earlier checkpoint")
    return load_checkpoint_weights(ckpt, "ema")


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place, so it is itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ----------------------------------------------------------------------------- data stream


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


# ----------------------------------------------------------------------------- RNG state


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG a step can touch, JSON-encodable."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None,
        "generator": _b64(generator.get_state()),
    }


def _set_rng_state(state: dict[str, Any], generator: torch.Generator | None) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(_unb64(state["torch"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])
    if generator is not None:
        generator.set_state(_unb64(state["generator"]))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def _rng_preserved(generator: torch.Generator) -> Iterator[None]:
    """Callbacks (sampling videos) must not move the RNGs, or a resumed run would diverge."""
    state = _rng_state(generator)
    try:
        yield
    finally:
        _set_rng_state(state, generator)


# ----------------------------------------------------------------------------- optimiser, EMA


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


class _EMA:
    """fp32 exponential moving average of a module's floating-point state (parameters averaged,
    buffers copied). Works on DTensor shards under FSDP2 (each rank averages its own shard)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.names = {n for n, _ in model.named_parameters()}
        self.state = {
            k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.names and v.is_floating_point():
                self.state[k].lerp_(v.detach().float(), 1.0 - self.decay)  # ema ← d·ema + (1−d)·p
            else:
                self.state[k].copy_(v)


# ----------------------------------------------------------------------------- distributed


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


def _like(src: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`src` (a full CPU tensor) placed like `ref` (device, and sharding if a DTensor)."""
    if _is_dtensor(ref):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(src.to(ref.device_mesh.device_type), ref.device_mesh, ref.placements)
    return src.to(ref.device)


# ----------------------------------------------------------------------------- checkpoints


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


def _first_nonfinite(tensors: dict[str, Any]) -> str | None:
    """The name of the first floating tensor (of a nested state) holding NaN or inf, else None."""
    for k, v in tensors.items():
        if isinstance(v, dict):
            inner = _first_nonfinite(v)
            if inner is not None:
                return f"{k}.{inner}"
        elif isinstance(v, (list, tuple)):
            inner = _first_nonfinite(dict(enumerate(v)))
            if inner is not None:
                return f"{k}.{inner}"
        elif isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(_full(v)).all():
            return str(k)
    return None


def _check_model_keys(ckpt: Path, saved: dict[str, torch.Tensor], model_sd: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(model_sd) - set(saved))
    unexpected = sorted(set(saved) - set(model_sd))
    shapes = [
        f"{k} {tuple(saved[k].shape)} vs {tuple(model_sd[k].shape)}"
        for k in model_sd
        if k in saved and tuple(saved[k].shape) != tuple(model_sd[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if items:
                parts.append(f"{label}: {', '.join(items[:3])}{' …' if len(items) > 3 else ''}")
        raise MismatchError(
            f"{ckpt} does not fit this model ({'; '.join(parts)}); it was made with another preset or "
            f"model settings: resume with the same settings or use a new --out"
        )


_VERIFIED: dict[str, tuple] = {}
"""Checkpoint folders already hashed by this process, with the (size, mtime) of their files."""


def verify_checkpoint(ckpt: Path) -> dict[str, Any]:
    """The state.json of a checkpoint to resume from, after checking it and every file it needs
    against the bytes and sha256 it recorded: a missing, truncated or bit-flipped file is named
    before anything is loaded or written. Hashes once per process (a step checks before it writes
    its config.json, the trainer again before loading)."""
    state = _checked_state(ckpt)
    files = state.get("files") or {}
    ema_expected = EMA_FILE in files or (not files and float(state["config"].get("ema_decay", 0) or 0) > 0)
    needed = (MODEL_FILE, OPTIM_FILE) + ((EMA_FILE,) if ema_expected else ())
    stamp = tuple((f, (ckpt / f).stat().st_size, (ckpt / f).stat().st_mtime_ns) if (ckpt / f).is_file() else (f,) for f in needed)
    if _VERIFIED.get(str(ckpt)) != stamp:
        for f in needed:
            check_file_record(ckpt / f, files.get(f))
        _VERIFIED[str(ckpt)] = stamp
    return state


def _checked_state(ckpt: Path) -> dict[str, Any]:
    """state.json of a checkpoint, or an InputError naming it when it lacks what resume reads."""
    path = ckpt / STATE
    state = read_json(path, "checkpoint state")
    try:
        if not isinstance(state, dict):
            raise TypeError("not a JSON object")
        for key in ("step", "epoch", "position"):
            if isinstance(state[key], bool) or not isinstance(state[key], int) or state[key] < 0:
                raise TypeError(f"{key!r} is not a whole number")
        rng_keys = {"python", "numpy", "torch", "generator"}
        if not isinstance(state["rng"], list) or not state["rng"] or not all(isinstance(r, dict) and rng_keys <= set(r) for r in state["rng"]):
            raise TypeError("'rng' is not a list of RNG states")
        if not isinstance(state["config"], dict):
            raise TypeError("'config' is not an object")
        TrainConfig.from_dict(state["config"])
    except KeyError as err:
        raise InputError(f"{path}: not a semgen checkpoint state (no {err} key); resume from an earlier checkpoint") from None
    except (TypeError, ValueError, ConfigError) as err:
        raise InputError(f"{path}: not a semgen checkpoint state ({err}); resume from an earlier checkpoint") from None
    return state


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines for steps after `step` (they belong to the part of a run being redone)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if int(rec.get("step", 0)) <= step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


# ----------------------------------------------------------------------------- the loop


class _Trainer:
    """State of one run; `train()` is its only public face."""

    def __init__(self, d, model, dataset, collate, loss_fn, cfg, out_dir, reporter, on_checkpoint, resume_hint,
                 fsdp, fsdp_modules, device, before_save=None):
        self.cfg, self.out = cfg, Path(out_dir)
        self.before_save = before_save
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

        # 1. Model: a template for callbacks under FSDP (its weights are sharded), then wrap.
        self.fsdp = fsdp
        self.raw = model
        self.template = copy.deepcopy(model).cpu() if (fsdp and on_checkpoint) else None
        if fsdp:
            self.model = self._fully_shard(model, fsdp_modules)
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

        # 2. Optimiser, schedule, EMA, the step generator.
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.raw, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(cfg))
        self.ema = _EMA(self.raw, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.generator = torch.Generator(device=self.device)
        self.bf16 = cfg.precision == "bf16" and (
            self.device.type == "cpu" or (self.device.type == "cuda" and torch.cuda.is_bf16_supported())
        )
        if cfg.precision == "bf16" and not self.bf16:
            self.reporter.warn(f"bf16 is not supported on {self.device}; training in fp32")

        self.step, self.elapsed_before = 0, 0.0
        seeded = bool(getattr(dataset, "takes_seed", False))
        lengths = getattr(dataset, "lengths", None)
        if lengths is not None and len(lengths) != len(dataset):
            raise ValueError(f"dataset.lengths has {len(lengths)} entries for {len(dataset)} samples")
        self.stream = _Stream(len(dataset), cfg.seed, seeded, lengths=lengths, batch=cfg.batch_size)
        self.last_ckpt: Path | None = None
        self.stop_requested = False
        self.phase = "done"  # "step" (forward/backward) -> "update" -> "done"; "save" while saving

    def _fully_shard(self, model: nn.Module, fsdp_modules) -> nn.Module:
        from torch.distributed.fsdp import fully_shard

        if not self.d.active and not (dist.is_available() and dist.is_initialized()):
            raise ConfigError("--fsdp needs a distributed launch (torchrun --nproc_per_node=K ...)")
        model.to(self.device)
        blocks = list(fsdp_modules(model)) if fsdp_modules else _default_blocks(model)
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
        return model

    # ---- state

    def _collective_state(self, model_only: bool = False) -> dict[str, Any]:
        """Full model / EMA / optimizer state on rank 0 (gathers shards under FSDP: collective)."""
        if self.fsdp and model_only:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return {"model": get_model_state_dict(self.raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))}
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_sd = get_model_state_dict(self.raw, options=opts)
            optim_sd = get_optimizer_state_dict(self.raw, self.optimizer, options=opts)
        else:
            model_sd = {k: v.detach().cpu() for k, v in self.raw.state_dict().items()}
            optim_sd = self.optimizer.state_dict()
        ema_sd = {k: _full(v) for k, v in self.ema.state.items()} if self.ema else None
        return {"model": model_sd, "optim": optim_sd, "ema": ema_sd}

    def save(self, reason: str = "") -> Path:
        """Write checkpoints/step-N/ (state.json last, then rename), then `latest`, then prune."""
        cfg = self.cfg
        if self.before_save is not None:
            with _rng_preserved(self.generator):
                self.before_save(self.raw, self.ema.state if self.ema else None)
        states = self._collective_state()
        bad = _first_nonfinite({"model": states["model"], "ema": states["ema"] or {}})
        if self.d.active:  # FSDP gathers the full state on rank 0 only: every rank stops with it
            flag = torch.tensor([float(bad is not None)], device=self.device)
            dist.all_reduce(flag)
            bad = bad or ("(on rank 0)" if flag.item() > 0 else None)
        if bad is not None:  # never commit a non-finite state (a diverged update, a bit flip in memory)
            last = f"the last checkpoint {self.last_ckpt.name} is kept" if self.last_ckpt is not None else "no checkpoint was written"
            raise ConfigError(f"step {self.step}: weight {bad} is not finite after the update (the training diverged); "
                              f"nothing was saved ({last}); lower --lr")
        rng = _rng_state(self.generator)
        all_rng = [None] * self.d.world
        if self.d.active:
            dist.all_gather_object(all_rng, rng)
        else:
            all_rng = [rng]
        name = _step_dir_name(self.step)
        final = self.out / CHECKPOINTS / name
        if self.d.main:
            for stale in final.parent.glob("step-*.tmp*"):  # left by a killed save (this run holds the folder's lock)
                shutil.rmtree(stale, ignore_errors=True)
            tmp = final.with_name(f"{name}.tmp-{os.getpid()}")
            tmp.mkdir(parents=True)
            meta = {"format": "pt", "step": str(self.step)}
            _save_safetensors(states["model"], tmp / MODEL_FILE, meta)
            if states["ema"] is not None:
                _save_safetensors(states["ema"], tmp / EMA_FILE, {**meta, "ema_decay": str(cfg.ema_decay)})
            torch.save({"optimizer": states["optim"], "scheduler": self.scheduler.state_dict()}, tmp / OPTIM_FILE)
            files = {f: file_record(tmp / f) for f in (MODEL_FILE, EMA_FILE, OPTIM_FILE) if (tmp / f).is_file()}
            state = {
                "version": STATE_VERSION,
                "step": self.step,
                "epoch": self.stream.epoch,
                "position": self.stream.position,
                "elapsed_s": self.elapsed_before + (time.perf_counter() - self.t0),
                "world_size": self.d.world,
                "fingerprint": cfg.fingerprint(),
                "config": cfg.to_dict(),
                "rng": all_rng,
                "files": files,
            }
            write_json_atomic(tmp / STATE, state)  # the commit marker of the folder
            if final.exists():
                shutil.rmtree(final)  # an uncommitted leftover, or a step redone after resume
            os.replace(tmp, final)
            write_text_atomic(self.out / CHECKPOINTS / LATEST, name + "\n")
            self._prune()
            self.reporter.info(f"saved {final}{f' ({reason})' if reason else ''}")
        if self.d.active:
            dist.barrier()
        self.last_ckpt = final
        return final

    def _prune(self) -> None:
        keep = self.cfg.keep_last
        if keep <= 0:
            return
        for _, path in _valid_checkpoints(self.out)[:-keep]:
            for f in _TRAINER_FILES:  # state.json first: the folder stops counting at once
                (path / f).unlink(missing_ok=True)
            if not any(path.iterdir()):
                path.rmdir()

    def load(self, ckpt: Path) -> None:
        state = verify_checkpoint(ckpt)
        saved = load_tensors(ckpt / MODEL_FILE)
        bad = _first_nonfinite(saved)
        if bad is not None:
            raise InputError(f"{ckpt / MODEL_FILE}: weight {bad} holds NaN or inf; resume from an earlier checkpoint")
        model_sd = self.raw.state_dict()
        _check_model_keys(ckpt, saved, model_sd)
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.raw, saved, options=opts)
        else:
            self.raw.load_state_dict(saved)
        try:
            blob = torch.load(ckpt / OPTIM_FILE, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or not {"optimizer", "scheduler"} <= set(blob):
                raise ValueError("no optimizer and scheduler state in it")
        except Exception as err:  # a corrupt zip, a truncated pickle, a foreign file
            raise InputError(f"{ckpt / OPTIM_FILE}: not a readable optimizer state ({str(err).splitlines()[0][:160]})") from None
        bad = _first_nonfinite(blob["optimizer"].get("state", {}) if isinstance(blob["optimizer"], dict) else {})
        if bad is not None:
            raise InputError(f"{ckpt / OPTIM_FILE}: optimizer state {bad} holds NaN or inf; resume from an earlier checkpoint")
        if self.fsdp:
            set_optimizer_state_dict(self.raw, self.optimizer, blob["optimizer"], options=opts)
        else:
            try:
                self.optimizer.load_state_dict(blob["optimizer"])
            except (ValueError, KeyError, TypeError, RuntimeError) as err:
                raise InputError(f"{ckpt / OPTIM_FILE}: does not fit this model's optimizer ({str(err).splitlines()[0][:160]})") from None
        self.scheduler.load_state_dict(blob["scheduler"])
        if self.ema:
            if (ckpt / EMA_FILE).is_file():
                ema = load_tensors(ckpt / EMA_FILE)
                bad = _first_nonfinite(ema) or next((k for k in self.ema.state if k not in ema), None)
                if bad is not None:
                    raise InputError(f"{ckpt / EMA_FILE}: {bad} is missing or not finite; resume from an earlier checkpoint")
                for k, ref in self.ema.state.items():
                    self.ema.state[k] = _like(ema[k], ref).to(ref.dtype)
            else:
                self.reporter.warn(f"{ckpt} has no {EMA_FILE}; the EMA restarts from the current weights")
                self.ema = _EMA(self.raw, self.cfg.ema_decay)
        self.step = int(state["step"])
        self.stream.epoch, self.stream.position = int(state["epoch"]), int(state["position"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        rngs = state["rng"]
        if len(rngs) == self.d.world:
            try:
                _set_rng_state(rngs[self.d.rank], self.generator)
            except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
                raise InputError(f"{ckpt / STATE}: its RNG state cannot be restored ({type(err).__name__}: {str(err)[:120]}); resume from an earlier checkpoint") from None
        else:
            self.reporter.warn(
                f"{ckpt} was written by {len(rngs)} processes, this run has {self.d.world}: RNGs are reseeded, "
                "so losses will not match an uninterrupted run exactly"
            )
            _seed_everything(_hash_seed(self.cfg.seed, self.d.rank, self.step))
            self.generator.manual_seed(_hash_seed(self.cfg.seed, self.d.rank, self.step, 1))
        old = TrainConfig.from_dict(state["config"])
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
            m.load_state_dict({k: v.to(dtype=ref[k].dtype) for k, v in full.items()})
        return m.to(self.device).eval().requires_grad_(False)

    def _callback(self, ckpt: Path) -> None:
        if self.on_checkpoint is None:
            return
        # Full weights for the copy; gathering FSDP shards is collective, so every rank joins.
        if self.ema:
            full_ema = {k: _full(v) for k, v in self.ema.state.items()}
        elif self.fsdp:
            full_ema = self._collective_state(model_only=True)["model"]
        else:
            full_ema = None
        if self.d.main:
            with _rng_preserved(self.generator), torch.no_grad():
                ema_model = self._ema_model(full_ema)
                self.on_checkpoint(self.step, ckpt, ema_model)
                del ema_model
        if self.d.active:
            dist.barrier()

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
        cfg = self.cfg
        self.model.train()
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

        # 3. Clip (the norm is logged either way), step, schedule, EMA.
        lr = self.optimizer.param_groups[0]["lr"]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if _is_dtensor(grad_norm):
            grad_norm = grad_norm.full_tensor()
        self._stop_if_nonfinite(culprits, float(grad_norm))  # before the update: no weight sees it
        self.phase = "update"
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update(self.raw)
        self.step += 1

        # 4. Loss and fields averaged over micro-steps and ranks; a Ctrl-C anywhere stops all.
        names = sorted(field_sums)
        packed = torch.tensor(
            [loss_sum.item(), *(field_sums[n] for n in names), float(self.stop_requested)],
            dtype=torch.float64, device=self.device,
        )
        if self.d.active:
            dist.all_reduce(packed)
        packed[:-1] /= cfg.grad_accum * self.d.world
        self.stop_requested = bool(packed[-1].item() > 0)
        values = packed[:-1].tolist()
        return {"loss": values[0], "lr": lr, "grad_norm": float(grad_norm), **dict(zip(names, values[1:]))}

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
        step = self.step + 1
        last = f"the last checkpoint {self.last_ckpt.name} is kept" if self.last_ckpt is not None else "no checkpoint was written"
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

    # ---- run

    def run(self, ckpt: Path | None) -> TrainResult:
        cfg = self.cfg
        self.t0 = time.perf_counter()
        metrics_path = self.out / METRICS
        resumed_from = None
        if ckpt is not None:
            self.load(ckpt)
            self.last_ckpt = ckpt
            resumed_from = self.step
            if self.step >= cfg.steps:
                self.reporter.info(f"{self.out} already reached step {self.step} of {cfg.steps}; nothing to do")
                return TrainResult(self.step, None, self.out, ckpt, metrics_path, 0.0, resumed_from)
            self.reporter.info(f"resuming {self.out} from {ckpt.name}")
        else:
            _seed_everything(cfg.seed + self.d.rank)
            self.generator.manual_seed(cfg.seed + self.d.rank)
        if self.d.main:
            (self.out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
            _truncate_metrics(metrics_path, self.step)

        self.reporter.start("train", total=cfg.steps, unit="steps")
        if self.step:
            self.reporter.advance("train", self.step)
        metrics = open(metrics_path, "a") if self.d.main else None
        restore_sigint = self._install_sigint()
        last_loss, interrupted, snap = None, False, None
        batches = self._micro_batches()
        try:
            while self.step < cfg.steps:
                t_step = time.perf_counter()
                snap = (self.stream.epoch, self.stream.position, _rng_state(self.generator))
                self.phase = "step"
                row = self._one_step(batches)
                self.phase = "done"
                dt = time.perf_counter() - t_step
                last_loss = row["loss"]
                s = self.step
                if self.d.main:
                    if s % cfg.log_every == 0 or s == cfg.steps:
                        rec = {
                            "step": s, "loss": row["loss"], "lr": row["lr"], "grad_norm": row["grad_norm"],
                            "samples_per_s": cfg.batch_size / dt,
                            "elapsed_s": self.elapsed_before + (time.perf_counter() - self.t0),
                            **{k: v for k, v in row.items() if k not in ("loss", "lr", "grad_norm")},
                        }
                        metrics.write(json.dumps(rec) + "\n")
                        metrics.flush()
                    self.reporter.advance("train", 1, loss=row["loss"], lr=row["lr"], **{"it/s": 1.0 / dt})
                if self.stop_requested:
                    break
                sample_due = self.on_checkpoint is not None and (
                    (cfg.sample_every > 0 and s % cfg.sample_every == 0) or s == cfg.steps
                )
                if (cfg.save_every > 0 and s % cfg.save_every == 0) or s == cfg.steps or sample_due:
                    self.phase = "save"
                    path = self.save()
                    if sample_due or (cfg.sample_every == 0 and self.on_checkpoint is not None):
                        self._callback(path)
                    self.phase = "done"
        except KeyboardInterrupt:
            # Ctrl-C outside the SIGINT handler (a second Ctrl-C, a non-main thread, a callback).
            interrupted = True
            if self.phase == "step" and not self.d.active:
                # Nothing was updated yet: roll the cursor and RNGs back to the step boundary.
                self.stream.epoch, self.stream.position = snap[0], snap[1]
                _set_rng_state(snap[2], self.generator)
                self.optimizer.zero_grad(set_to_none=True)
                self.stop_requested = True
            elif self.phase == "done" and not self.d.active:
                self.stop_requested = True
            else:
                # Mid-update, mid-save or under DDP: the state may be torn, so save nothing.
                self.reporter.info(f"stopped during step {self.step + 1}; the last saved checkpoint is kept")
        finally:
            batches.close()  # shuts DataLoader workers down
            restore_sigint()
            if metrics:
                metrics.close()
        if self.stop_requested:
            interrupted = True
            if self.last_ckpt is None or self.last_ckpt.name != _step_dir_name(self.step):
                self.save("stopped early")
            self.reporter.info(f"stopped early at step {self.step} of {cfg.steps}")
        if interrupted and self.resume_hint:
            self.reporter.info(f"resume with: {self.resume_hint}")
        self.reporter.finish("train")
        seconds = time.perf_counter() - self.t0
        ckpt_path = self.last_ckpt if self.last_ckpt is not None else ckpt
        return TrainResult(self.step, last_loss, self.out, ckpt_path, metrics_path, seconds, resumed_from, interrupted)

    def _install_sigint(self) -> Callable[[], None]:
        """First Ctrl-C: finish this step, save, return. Second: KeyboardInterrupt at once."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        # Installed even when the process started with SIGINT ignored (`cmd &` in a script): a
        # `kill -INT` (or a Ctrl-C reaching the script's jobs) then stops it cleanly, saved, exit 130.
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            self.reporter.info("stopping after this step (Ctrl-C again to abort without saving)")

        signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, previous)



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
    fsdp:          shard with FSDP2 `fully_shard`, per module of `fsdp_modules(model)` (default: the
                   entries of every nn.ModuleList), then the root. Needs a torchrun launch.
    device:        default cuda:LOCAL_RANK when CUDA is available, else cpu.
    """
    from semgen_cli.io.lock import hold

    out_dir = Path(out_dir)
    with hold(out_dir, "run folder"):  # a no-op when the step calling us holds it already
        return _train_locked(model, dataset, collate, loss_fn, cfg, out_dir, resume, reporter, on_checkpoint,
                             resume_hint, fsdp, fsdp_modules, device, before_save)


def _train_locked(model, dataset, collate, loss_fn, cfg, out_dir, resume, reporter, on_checkpoint, resume_hint, fsdp,
                  fsdp_modules, device, before_save) -> TrainResult:
    ckpt = check_run_dir(out_dir, resume)
    if resume and ckpt is None and reporter is not None:
        reporter.warn(f"{out_dir}: no complete checkpoint (the run stopped during its first save); starting from step 0")
    d = _init_distributed()
    try:
        trainer = _Trainer(
            d, model, dataset, collate, loss_fn, cfg, out_dir, reporter, on_checkpoint, resume_hint, fsdp,
            fsdp_modules, device, before_save=before_save,
        )
        result = trainer.run(ckpt)
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

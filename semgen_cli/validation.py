"""Held-out clips and a held-out loss for both trainers (`--val-clips`, `--val-every`), and the
settings of a run's monitoring (`MonitorConfig`: those two, `--report-to`, `--sample-steps`,
`--val-prompts`).

Held-out clips (`hold_out`): `--val-clips N` takes N clips of the data at random, the draw seeded by
the run's `--seed`, so a resumed run (same seed, same data) holds out the same ones; their ids are
recorded in the run's config.json ("validation"), a resume that would hold out others is refused,
and the training set is the data without them (`Without`), so the sampler never draws them.

Held-out loss (`HeldOutLoss`): every `--val-every` steps, the rectified-flow loss (paper §3.2, the
objective both stages train with; DESIGN §2) of each held-out clip at the fixed timesteps
`VAL_TIMESTEPS` and with fixed noise (a CPU generator seeded from the run's seed, drawn afresh in
the same order at every evaluation), averaged: the curve moves only when the weights do, and is not
dominated by which t a step happened to draw. No text dropout; stage 1's semantic condition gets the
RAE noise at half its training maximum, as the validation samples do. It is computed with the
weights being trained, on every rank (FSDP's forward is collective), under the trainer's precision.
The per-stage losses (`latent_val_loss`, `semantic_val_loss`) follow `LatentStep.forward` and
`SemanticStep.forward` with the random draws made fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from semgen_cli.errors import ConfigError, MismatchError

VAL_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)
"""Timesteps of the held-out loss (t = 1 is pure noise): an even grid, no shift."""
MAX_VAL_PROMPTS_BYTES = 1 << 20
"""Largest --val-prompts file (1 MiB)."""
MAX_VAL_PROMPTS = 64
"""Most prompts one sampling renders (each is a video per sample step)."""


@dataclass
class MonitorConfig:
    """What a trainer reports besides metrics.jsonl, and what it validates on."""

    report_to: tuple[str, ...] = ()
    """Trackers (`semgen_cli.tracking.TRACKERS`); () for none."""
    val_clips: int = 0
    """Clips held out of training (0: none)."""
    val_every: int = 0
    """Log val_loss over the held-out clips every this many steps (0: never)."""
    sample_steps: int = 10
    """Euler steps of the sample videos (each stage)."""
    val_prompts: str | None = None
    """train-semantic: a file of prompts (one a line) its samples render."""
    prompts: list[str] = field(default_factory=list, repr=False)
    """The prompts read from `val_prompts`."""

    def __post_init__(self) -> None:
        from semgen_cli.tracking import check_report_to, parse_report_to

        self.report_to = parse_report_to(list(self.report_to))
        for name in ("val_clips", "val_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} {value!r}: must be a whole number ≥ 0")
        if not isinstance(self.sample_steps, int) or not 1 <= self.sample_steps <= 1000:
            raise ConfigError(f"--sample-steps {self.sample_steps!r}: must be from 1 to 1000")
        if self.val_every and not self.val_clips:
            raise ConfigError(f"--val-every {self.val_every}: needs clips to validate on; pass --val-clips N")
        if self.val_prompts is not None:
            self.prompts = read_val_prompts(self.val_prompts)
        check_report_to(self.report_to)

    def check_sampling(self, sample_every: int, stage: str) -> None:
        """--sample-every needs something to render: held-out clips (stage 1; stage 2 renders their
        captions when no --val-prompts is given) or --val-prompts (stage 2)."""
        if sample_every and not self.val_clips and not (stage == "train-semantic" and self.prompts):
            needs = "--val-clips N (their captions) or --val-prompts FILE" if stage == "train-semantic" else "--val-clips N (their own plans and captions)"
            raise ConfigError(f"--sample-every {sample_every}: nothing to render; pass {needs}")


def read_val_prompts(path: str | Path) -> list[str]:
    """Prompts of --val-prompts: one a line; blank lines and lines starting with # are skipped."""
    from semgen_cli.errors import InputError
    from semgen_cli.io.small_files import read_small_text

    text = read_small_text(path, "--val-prompts", MAX_VAL_PROMPTS_BYTES, "a text file with one prompt per line")
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise InputError(f"--val-prompts {path}: no prompts (one per line)")
    if len(prompts) > MAX_VAL_PROMPTS:
        raise InputError(f"--val-prompts {path}: {len(prompts)} prompts; at most {MAX_VAL_PROMPTS} (each is rendered at every sample step)")
    return prompts


def hold_out(records: list[dict], candidates: list[int], n: int, seed: int) -> list[int]:
    """`n` of the record indices `candidates`, drawn with a generator seeded by `seed` (sorted).
    Refused when that is more than the data holds or leaves nothing to train on."""
    if n == 0:
        return []
    if n >= len(candidates):
        what = "more than" if n > len(candidates) else "all of"
        raise ConfigError(f"--val-clips {n}: {what} the {len(candidates)} clips the run can train on, leaving none to train "
                          f"on; hold out at most {len(candidates) - 1}")
    g = torch.Generator().manual_seed(int(seed) ^ 0x5EED_0F_7A1)  # apart from the data order's draws
    picked = torch.randperm(len(candidates), generator=g)[:n].tolist()
    return sorted(candidates[i] for i in picked)


def record(records: list[dict], held: list[int], mon: MonitorConfig) -> dict[str, Any] | None:
    """The "validation" entry of a run's config.json (None without held-out clips)."""
    if not held:
        return None
    return {"clips": [records[i]["id"] for i in held], "val_every": mon.val_every, "timesteps": list(VAL_TIMESTEPS)}


def check_same_clips(out: str | Path, entry: dict | None, resume: bool) -> None:
    """On --resume, the run must hold out the clips it held out before."""
    from semgen_cli.io.shards import read_json

    config = Path(out) / "config.json"
    if not resume or not config.is_file():
        return
    before = (read_json(config).get("validation") or {}).get("clips", [])
    now = (entry or {}).get("clips", [])
    if before != now:
        raise MismatchError(f"{out}: the run held out {len(before)} clip(s) ({', '.join(before) or 'none'}), this call "
                            f"{len(now)} ({', '.join(now) or 'none'}); pass the same --val-clips and --seed to resume it")


class Without(torch.utils.data.Dataset):
    """A training dataset without the items of held-out clips (`clip_of(item) → record index`).
    Keys pass through (a `Sample` keeps its seed, with the index mapped), as do `lengths`."""

    def __init__(self, dataset, clip_of: Callable[[int], int], held: list[int]) -> None:
        self.dataset = dataset
        gone = set(held)
        self.keep = [k for k in range(len(dataset)) if clip_of(k) not in gone]
        if not self.keep:
            raise ConfigError(f"--val-clips {len(held)}: no training item is left; hold out fewer clips")
        self.takes_seed = bool(getattr(dataset, "takes_seed", False))
        if getattr(dataset, "lengths", None) is not None:
            self.lengths = [dataset.lengths[k] for k in self.keep]

    def __len__(self) -> int:
        return len(self.keep)

    def _key(self, key):
        return key._replace(index=self.keep[key.index]) if self.takes_seed else self.keep[key]

    def __getitem__(self, key):
        return self.dataset[self._key(key)]

    def sample_id(self, key) -> str:
        return self.dataset.sample_id(self._key(key))


class HeldOutLoss:
    """`validate(step, model)` for the trainer: {"val_loss": mean} every `every` steps, else {}.

    `batches` are the held-out clips, each a collated batch of one; `loss_at(model, batch, t, g)`
    is a stage's loss at timestep `t` (a (1,) tensor) with noise drawn from `g`."""

    def __init__(self, batches: list[dict], loss_at: Callable, every: int, seed: int) -> None:
        self.batches, self.loss_at, self.every, self.seed = batches, loss_at, every, seed

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    @torch.no_grad()
    def __call__(self, step: int, model) -> dict[str, float]:
        if not self.due(step):
            return {}
        from semgen_cli.training import _to_device

        dev = next(model.parameters()).device
        g = torch.Generator().manual_seed(int(self.seed))  # the same noise at every evaluation
        total = 0.0
        for batch in self.batches:
            batch = _to_device(batch, dev)
            for t in VAL_TIMESTEPS:
                total += float(self.loss_at(model, batch, torch.full((1,), t, device=dev), g))
        return {"val_loss": total / (len(self.batches) * len(VAL_TIMESTEPS))}


def _randn(like: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=g).to(like.device, like.dtype)


def latent_val_loss(model, batch: dict, t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Stage 1 (`LatentStep`): the plain MSE of the velocity at `t`, text kept, the semantic
    condition (its posterior means) with RAE noise σ = half the training maximum."""
    from semgen_cli.flow import flow_loss

    z0 = batch["latents"].float()
    cond: dict = {"text": batch["text"], "text_mask": batch.get("text_mask")}
    eps = _randn(z0, g)
    if model.condition != "none":
        sem, _ = model.condition_tokens(batch)
        sigma = model.semantic_noise / 2
        cond.update(semantic=sem + sigma * _randn(sem, g), semantic_sigma=torch.full((1,), sigma, device=z0.device),
                    semantic_times=model.semantic_times if model.semantic_times.numel() else None)
    return flow_loss(model.dit, z0, t, eps, **cond)


def semantic_val_loss(model, batch: dict, t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Stage 2 (`SemanticStep`): the masked MSE of the velocity at `t`, text kept."""
    from semgen_cli.flow import flow_loss
    from semgen_cli.models.dit import frame_mask_to_token_mask

    z0 = model.targets(batch["semantic"])  # (1, c, Ts, hs, ws)
    _, _, _, hs, ws = z0.shape
    eps = _randn(z0, g)
    fmask = batch["frame_mask"]
    return flow_loss(model.dit, z0, t, eps, mask=fmask[:, None, :, None, None], text=batch["text"], text_mask=batch["text_mask"],
                     token_mask=frame_mask_to_token_mask(fmask, hs, ws))


@dataclass
class Hooks:
    """What a trainer hands `training.train` for its monitoring: the training set without the
    held-out clips, the config.json entry, the held-out loss and the sampler (None when off)."""

    monitor: MonitorConfig
    dataset: Any
    record: dict[str, Any] | None = None
    validate: HeldOutLoss | None = None
    make_sampler: Callable[..., Any] | None = None

    def trackers(self, out: str | Path, config: dict[str, Any], resume: bool):
        """The run's trackers (a context manager that closes them)."""
        from semgen_cli.tracking import open_trackers

        return open_trackers(self.monitor.report_to, out, config, resume)

    def sampler(self, trackers=()):
        """The trainer's on_checkpoint: the sample videos (None without --sample-every)."""
        return self.make_sampler(trackers) if self.make_sampler is not None else None


def _held(monitor: MonitorConfig | None, records: list[dict], candidates: list[int], train_cfg, out, resume: bool, stage: str):
    monitor = monitor or MonitorConfig()
    monitor.check_sampling(train_cfg.sample_every, stage)
    held = hold_out(records, candidates, monitor.val_clips, train_cfg.seed)
    entry = record(records, held, monitor)
    check_same_clips(out, entry, resume)
    return monitor, held, entry


def latent_hooks(monitor: MonitorConfig | None, dataset, collate: Callable, train_cfg, out: str | Path, seconds: float,
                 resume: bool, reporter=None) -> Hooks:
    """train-latent's hooks: clips held out of `dataset` (a `LatentWindows`; candidates are the clips
    long enough for a window), each validated and sampled on its window drawn with the run's seed."""
    from semgen_cli.sampling import LatentSamples
    from semgen_cli.training import Sample

    records = dataset.data.records
    monitor, held, entry = _held(monitor, records, list(dataset.index), train_cfg, out, resume, "train-latent")
    if not held:
        return Hooks(monitor, dataset)
    items = [dataset[Sample(dataset.index.index(i), train_cfg.seed)] for i in held]
    loss = HeldOutLoss([collate([it]) for it in items], latent_val_loss, monitor.val_every, train_cfg.seed)
    clips = [(records[i]["id"], records[i]["caption"], it.get("semantic")) for i, it in zip(held, items, strict=True)]

    def sampler(trackers):
        return LatentSamples(out, clips, seconds, monitor.sample_steps, train_cfg.seed, trackers, reporter)

    return Hooks(monitor, Without(dataset, lambda k: dataset.index[k], held), entry, loss if monitor.val_every else None,
                 sampler if train_cfg.sample_every else None)


def semantic_hooks(monitor: MonitorConfig | None, dataset, collate: Callable, train_cfg, out: str | Path, latent_run: str | Path,
                   resume: bool, reporter=None) -> Hooks:
    """train-semantic's hooks: whole clips held out of `dataset` (a `WholeClips`, with their windows);
    samples render --val-prompts, else the held-out clips' captions."""
    from semgen_cli.sampling import SemanticSamples

    records = dataset.data.records
    monitor, held, entry = _held(monitor, records, list(range(len(records))), train_cfg, out, resume, "train-semantic")
    whole = {i: k for k, (i, start, _) in reversed(list(enumerate(dataset.items))) if start == 0}  # each clip's first item: the whole clip
    loss = HeldOutLoss([collate([dataset[whole[i]]]) for i in held], semantic_val_loss, monitor.val_every, train_cfg.seed)
    prompts = monitor.prompts or [records[i]["caption"] for i in held]

    def sampler(trackers):
        return SemanticSamples(out, latent_run, prompts, monitor.sample_steps, train_cfg.seed, trackers, reporter)

    train_set = Without(dataset, lambda k: dataset.items[k][0], held) if held else dataset
    return Hooks(monitor, train_set, entry, loss if monitor.val_every else None, sampler if train_cfg.sample_every else None)

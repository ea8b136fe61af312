"""Options every training command shares, and how they become a `TrainConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Steps = Annotated[int, typer.Option(help="Total optimiser steps.")]
BatchSize = Annotated[int, typer.Option(help="Global batch size (all GPUs and accumulation steps).")]
GradAccum = Annotated[int, typer.Option(help="Gradient accumulation micro-steps per optimiser step.")]
Lr = Annotated[float, typer.Option(help="Peak learning rate (AdamW).")]
Warmup = Annotated[int, typer.Option(help="Linear warm-up steps.")]
Schedule = Annotated[str, typer.Option(help="LR schedule after warm-up: constant, cosine, linear.")]
WeightDecay = Annotated[float, typer.Option(help="AdamW weight decay (not on norms, biases, embeddings).")]
GradClip = Annotated[float, typer.Option(help="Clip the gradient norm to this (0: off).")]
EmaDecay = Annotated[float, typer.Option(help="EMA decay of the weights (0: no EMA).")]
Precision = Annotated[str, typer.Option(help="fp32 or bf16 (autocast where supported).")]
SaveEvery = Annotated[int, typer.Option(help="Save a checkpoint every N steps (and at the end).")]
KeepLast = Annotated[int, typer.Option(help="Checkpoints to keep.")]
Seed = Annotated[int, typer.Option(help="Seed of data order, timesteps and noise.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint (exactly).")]
AllowNewData = Annotated[bool, typer.Option("--allow-new-data", help="With --resume: continue the run on another data folder than it was trained on.")]
INTERRUPTED = 130
"""Exit code of a training stopped by Ctrl-C (after its checkpoint is saved), so `a && b` stops."""
Workers = Annotated[int, typer.Option(help="DataLoader worker processes.")]
Fsdp = Annotated[bool, typer.Option("--fsdp", help="Shard the DiT blocks with FSDP2 under torchrun (models that do not fit one GPU).")]


def train_config(steps, batch_size, grad_accum, lr, warmup, schedule, weight_decay, grad_clip, ema_decay, precision, save_every, keep_last, seed, num_workers, sample_every: int = 0):
    from semgen_cli.training import TrainConfig

    return TrainConfig(
        steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup, schedule=schedule,
        weight_decay=weight_decay, grad_clip=grad_clip, ema_decay=ema_decay, precision=precision,
        save_every=save_every, keep_last=keep_last, seed=seed, num_workers=num_workers, sample_every=sample_every,
    )


def parse_seconds_list(text: str | None, flag: str) -> tuple[float, ...]:
    """``"10,20,40"`` → ``(10.0, 20.0, 40.0)``; None or empty → ``()``."""
    from semgen_cli.errors import ConfigError

    if not text:
        return ()
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes seconds separated by commas, e.g. 10,20,40; got {text!r}") from None


def resume_hint(argv: list[str]) -> str:
    """The command that continues this run: the same arguments plus --resume."""
    import shlex

    args = [a for a in argv if a != "--resume"]
    return "semgen " + " ".join(shlex.quote(a) for a in args) + " --resume"


CONFIG_LIMIT = 1 << 20
"""Largest --config file read, in bytes."""


def _load_config_file(ctx: typer.Context, param, value):
    """Eager callback of --config: a JSON file of option values becomes the defaults that flags
    then override (defaults ← file ← flags). Keys are option names (`batch_size` or `batch-size`);
    an unknown key is an error naming the file."""
    if value is None:
        return value
    import json

    from semgen_cli.errors import ConfigError, InputError

    if not value.exists():
        raise InputError(f"--config {value}: no such file")
    if not value.is_file():  # a folder, /dev/zero, a pipe: never read without end
        raise InputError(f"--config {value}: not a regular file; give a JSON file of option values")
    if value.stat().st_size > CONFIG_LIMIT:
        raise InputError(f"--config {value}: {value.stat().st_size} bytes; a config file is at most {CONFIG_LIMIT} bytes")
    try:
        data = json.loads(value.read_bytes()[:CONFIG_LIMIT].decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"--config {value}: not a UTF-8 text file; give a JSON file of option values") from None
    except json.JSONDecodeError as err:
        raise InputError(f"--config {value}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise InputError(f"--config {value}: expected a JSON object of option values")
    names = {p.name for p in ctx.command.params if p.name not in ("config", "help")}
    clean = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(clean) - names)
    if unknown:
        raise ConfigError(f"--config {value}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    defaults = {p.name: p.default for p in ctx.command.params}
    for key, v in clean.items():
        kind, ok = _config_value_ok(defaults.get(key), v)
        if not ok:
            raise ConfigError(f"--config {value}: {key} is {json.dumps(v)}, expected {kind}")
    ctx.default_map = {**(ctx.default_map or {}), **clean}
    return value


def _config_value_ok(default, v) -> tuple[str, bool]:
    """(what the option takes, whether `v` is that), judged by the option's default: a bool is
    not a number, null only stands for an option whose default is null."""
    from pathlib import PurePath

    if isinstance(default, bool):
        return "true or false", isinstance(v, bool)
    if isinstance(default, int):
        return "a whole number", isinstance(v, int) and not isinstance(v, bool)
    if isinstance(default, float):
        return "a number", isinstance(v, (int, float)) and not isinstance(v, bool)
    if isinstance(default, (str, PurePath)):
        return "a string", isinstance(v, str)
    return "a number, string or null", v is None or isinstance(v, (int, float, str)) and not isinstance(v, bool)


ConfigFile = Annotated[
    Optional[Path],
    typer.Option("--config", is_eager=True, callback=_load_config_file, help="JSON file of option values (flags given on the command line win)."),
]

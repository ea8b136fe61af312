"""Options every training command shares, and how they become a `TrainConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from semgen_cli.cli.options import Defaults, choice, constant

TRAIN = Defaults("semgen_cli.training", "TrainConfig")
MONITOR = Defaults("semgen_cli.validation", "MonitorConfig")
"""TrainConfig's defaults and docstrings: train-latent's and train-semantic's training flags."""
COMPRESSOR_TRAIN = Defaults("semgen_cli.training", "TrainConfig",
                            Defaults("semgen_cli.steps.fit_compressor", "FitCompressorConfig").classvar("TRAIN_DEFAULTS"))
"""fit-compressor's: TrainConfig's, with FitCompressorConfig.TRAIN_DEFAULTS over them."""

PRESETS = constant("semgen_cli.models.presets", "PRESETS")
ATTENTION_KINDS = constant("semgen_cli.models.dit", "ATTENTION_KINDS")
Preset = Annotated[str, typer.Option(help=f"DiT size: {', '.join(PRESETS)}.", callback=choice("--preset", PRESETS))]

Steps = Annotated[int, typer.Option(help=TRAIN.doc("steps"))]
BatchSize = Annotated[int, typer.Option(help=TRAIN.doc("batch_size"))]
GradAccum = Annotated[int, typer.Option(help=TRAIN.doc("grad_accum"))]
Lr = Annotated[float, typer.Option(help=TRAIN.doc("lr"))]
Warmup = Annotated[int, typer.Option(help=TRAIN.doc("warmup_steps"))]
Schedule = Annotated[str, typer.Option(help=TRAIN.doc("schedule"))]
WeightDecay = Annotated[float, typer.Option(help=TRAIN.doc("weight_decay"))]
GradClip = Annotated[float, typer.Option(help=TRAIN.doc("grad_clip"))]
EmaDecay = Annotated[float, typer.Option(help=TRAIN.doc("ema_decay"))]
Precision = Annotated[str, typer.Option(help=TRAIN.doc("precision"))]
SaveEvery = Annotated[int, typer.Option(help=TRAIN.doc("save_every"))]
KeepLast = Annotated[int, typer.Option(help=TRAIN.doc("keep_last"))]
Seed = Annotated[int, typer.Option(help=TRAIN.doc("seed"))]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint (exactly).")]
AllowNewData = Annotated[bool, typer.Option("--allow-new-data", help="With --resume: continue the run on another data folder than it was trained on.")]
INTERRUPTED = 130
"""Exit code of a training stopped by Ctrl-C (after its checkpoint is saved), so `a && b` stops."""
Workers = Annotated[int, typer.Option(help=TRAIN.doc("num_workers"))]
Fsdp = Annotated[bool, typer.Option("--fsdp", help="Shard the DiT blocks with FSDP2 under torchrun (models that do not fit one GPU); checkpoints are sharded torch.distributed.checkpoint folders.")]
ReportTo = Annotated[Optional[list[str]], typer.Option("--report-to", help="Also send every metrics.jsonl row (and sample video) to tensorboard, wandb or trackio (repeat or comma-separate for several; default none). TensorBoard writes OUT/tracking/tensorboard.")]
ValClips = Annotated[int, typer.Option(help="Hold out this many clips (drawn with --seed, recorded in the run, never trained on) for --val-every and --sample-every.")]
ValEvery = Annotated[int, typer.Option(help="Log val_loss over the held-out clips (fixed timesteps and noise) every N steps (0: never).")]
SampleEvery = Annotated[int, typer.Option(help="Write sample videos into OUT/samples/step-N/ every N steps, with a checkpoint there (0: never).")]
SampleSteps = Annotated[int, typer.Option(help="Euler steps of the sample videos (each stage).")]
LoraRank = Annotated[Optional[int], typer.Option(help="Train LoRA adapters of this rank on the DiT blocks' attention and FFN projections (peft) instead of the whole DiT; the new layers (and compressor) train fully. The run stores only what trains, plus the --init base's path and fingerprint.")]
LoraAlpha = Annotated[Optional[float], typer.Option(help="LoRA scale alpha (default: the rank).")]
LoraTargets = Annotated[Optional[str], typer.Option(help="Comma-separated block layers to adapt, by the end of their name (default: self_attn.q,k,v,o, cross_attn.q,k,v,o, ffn.fc1, ffn.fc2; e.g. q,k,v or self_attn).")]
AsyncSave = Annotated[bool, typer.Option("--async-save", help=TRAIN.doc("async_save"))]
EmaStart = Annotated[int, typer.Option(help=TRAIN.doc("ema_start"))]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the resolved settings and exit without writing anything (not even --out).")]
ATTENTION_BACKENDS = constant("semgen_cli.models.acceleration", "ATTENTION_BACKENDS")
AttentionBackend = Annotated[str, typer.Option(help=f"SDPA kernel: {', '.join(ATTENTION_BACKENDS)} (all but auto and math need CUDA).",
                                               callback=choice("--attention-backend", ATTENTION_BACKENDS))]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile each DiT block (regional compilation).")]
GradientCheckpointing = Annotated[bool, typer.Option("--gradient-checkpointing", help="Recompute activations in backward.")]


MAX_BATCH, MAX_WORKERS = 1 << 20, 256
"""Upper bounds of --batch-size / --grad-accum and --num-workers: beyond them the flag is mistyped
(a batch of 10^12 samples never fills, 10^12 loader processes never start)."""


def train_config(steps, batch_size, grad_accum, lr, warmup, schedule, weight_decay, grad_clip, ema_decay, precision, save_every, keep_last, seed, num_workers,
                 sample_every: int = TRAIN.sample_every, ema_start: int = TRAIN.ema_start, async_save: bool = TRAIN.async_save,
                 fsdp: bool = False):
    from semgen_cli.errors import ConfigError
    from semgen_cli.training import TrainConfig

    for flag, value, most in (("--batch-size", batch_size, MAX_BATCH), ("--grad-accum", grad_accum, MAX_BATCH), ("--num-workers", num_workers, MAX_WORKERS)):
        if value > most:
            raise ConfigError(f"{flag} {value}: at most {most}")

    if async_save and not fsdp:
        raise ConfigError("--async-save needs --fsdp (it writes sharded checkpoints in the background); add --fsdp or drop --async-save")
    return TrainConfig(
        steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup, schedule=schedule,
        weight_decay=weight_decay, grad_clip=grad_clip, ema_decay=ema_decay, precision=precision,
        save_every=save_every, keep_last=keep_last, seed=seed, num_workers=num_workers, sample_every=sample_every,
        ema_start=ema_start, async_save=async_save,
    )


def dry_run(title: str, train_cfg) -> None:
    """--dry-run: after the settings table, the resolved training settings; nothing is written."""
    from semgen_cli.cli._common import console, settings_table

    settings_table("training (resolved)", {k.replace("_", " "): v for k, v in train_cfg.to_dict().items()})
    console.print("dry run: nothing was written")
def monitor_config(report_to, val_clips: int = 0, val_every: int = 0, sample_steps: int = 10, val_prompts=None):
    """The trainers' monitoring flags → `MonitorConfig` (checked, trackers importable, prompts read)."""
    from semgen_cli.validation import MonitorConfig

    return MonitorConfig(report_to=tuple(report_to or ()), val_clips=val_clips, val_every=val_every, sample_steps=sample_steps,
                         val_prompts=str(val_prompts) if val_prompts is not None else None)


def check_inputs(data: Path, runs: dict[str, tuple[str | Path | None, str]] | None = None) -> None:
    """Open what the command reads first, the data index and each run folder a flag names
    (flag → (path or None, the step that makes such runs)), with the library's own checks: a wrong
    path is then refused in one line before the settings are printed and before --out exists."""
    from semgen_cli.io.shards import Dataset
    from semgen_cli.runs import read_run

    Dataset(data)
    for flag, (path, step) in (runs or {}).items():
        if path is not None:
            read_run(path, step, flag)


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


CONFIG_MAX_BYTES = 1 << 20
"""Largest --config file read (1 MiB)."""


def _load_config_file(ctx: typer.Context, param, value):
    """Eager callback of --config: a JSON, YAML or TOML file of option values (by its extension,
    `_parse_config`) becomes the defaults that flags
    then override (defaults ← file ← flags). Keys are option names (`batch_size` or `batch-size`);
    an unknown key, or a value of another type than the option's, is an error naming the file.
    The file must be a regular file of at most CONFIG_MAX_BYTES (never a device or a pipe)."""
    if value is None:
        return value
    import json

    from semgen_cli.errors import ConfigError

    data = _parse_config(value)
    names = {p.name for p in ctx.command.params if p.name not in ("config", "help")}
    clean = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(clean) - names)
    if unknown:
        raise ConfigError(f"--config {value}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    hints = _option_types(ctx)
    for key, v in clean.items():
        problem = _type_problem(hints.get(key), v)
        if problem:
            raise ConfigError(f"--config {value}: {key} must be {problem}, got {json.dumps(v)[:60]}")
    ctx.default_map = {**(ctx.default_map or {}), **clean}
    return value


CONFIG_FORMATS = {".json": "JSON", ".yaml": "YAML", ".yml": "YAML", ".toml": "TOML"}
"""--config file extensions and the format each is read as."""


def _parse_config(path: Path) -> dict:
    """The mapping of option values in a --config file, read as its extension says (.json,
    .yaml/.yml, .toml); an unknown extension, a syntax error or a top level that is not a mapping
    is a one-line InputError naming the file."""
    import json

    from semgen_cli.errors import InputError
    from semgen_cli.io.small_files import read_small_text

    text = read_small_text(path, "--config", CONFIG_MAX_BYTES, "a JSON, YAML or TOML file of option values")
    fmt = CONFIG_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"--config {path}: unknown extension; give a .json, .yaml, .yml or .toml file of option values")
    try:
        if fmt == "JSON":
            data = json.loads(text)
        elif fmt == "YAML":
            data = _yaml_load(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"--config {path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except Exception as err:  # yaml.YAMLError, tomllib.TOMLDecodeError
        if type(err).__module__.split(".")[0] not in ("yaml", "tomllib"):
            raise
        reason = " ".join(str(err).split())[:160]
        raise InputError(f"--config {path}: not valid {fmt} ({reason})") from None
    if not isinstance(data, dict):
        raise InputError(f"--config {path}: expected a {fmt} {'object' if fmt == 'JSON' else 'mapping'} of option values (name: value)")
    return data


def _yaml_load(text: str):
    """yaml.safe_load, with `1e-4` read as a number as in JSON and TOML (PyYAML's YAML 1.1 rules
    read a float without a dot, such as the usual `lr: 1e-4`, as a string)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return yaml.load(text, Loader=Loader)  # noqa: S506  (a SafeLoader subclass)


def _option_types(ctx: typer.Context) -> dict:
    """Parameter name → its Python type, from the command function's annotations."""
    import inspect
    import typing

    try:
        return typing.get_type_hints(inspect.unwrap(ctx.command.callback))
    except Exception:  # a callback whose hints cannot be resolved: values are then checked by the flags' own parsers
        return {}


def _type_problem(hint, v) -> str | None:
    """What `v` (a JSON value) should be for an option of type `hint`, or None if it is that."""
    import math
    import typing

    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        if v is None:
            return None
        inner = [a for a in args if a is not type(None)]
        hint = inner[0] if len(inner) == 1 else None
    elif v is None:
        return "a value (null is not allowed here)"
    if hint is bool:
        return None if isinstance(v, bool) else "true or false"
    if hint is int:
        return None if isinstance(v, int) and not isinstance(v, bool) else "a whole number"
    if hint is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return None if ok else "a finite number"
    if hint is str or hint is Path:
        return None if isinstance(v, str) else "a string"
    if typing.get_origin(hint) is list:  # a repeatable option: --report-to
        return None if isinstance(v, list) and all(isinstance(x, str) for x in v) else 'a list of strings (e.g. ["tensorboard"])'
    return None


ConfigFile = Annotated[
    Optional[Path],
    typer.Option("--config", is_eager=True, callback=_load_config_file, help="JSON, YAML or TOML file of option values, by extension; keys are option names, e.g. batch-size: 2 (flags given on the command line win)."),
]

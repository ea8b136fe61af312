"""`semgen train-semantic`: stage 2, the semantic DiT (compressed semantics | text)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from semgen_cli.cli import _train as T


def command(
    data: Annotated[Path, typer.Argument(help="Shard folder from `semgen extract`.")],
    latent_run: Annotated[Path, typer.Option(help="train-latent run folder; its compressor is frozen and reused.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = Path("runs/semantic"),
    preset: Annotated[str, typer.Option(help="DiT size: tiny, toy, wan-1.3b, wan-14b.")] = "toy",
    text_dropout: Annotated[float, typer.Option(help="Probability of dropping the text (for CFG).")] = 0.1,
    shift: Annotated[Optional[float], typer.Option(help="Timestep shift (default: RAE's sqrt(elements/4096)).")] = None,
    max_seconds: Annotated[Optional[float], typer.Option(help="Cut clips longer than this (default: whole clips).")] = None,
    windows: Annotated[Optional[str], typer.Option(help="Also train on windows of these lengths in seconds, comma-separated (e.g. 10,20,40), cut from every longer clip at half-window strides, so durations between the data's clip lengths are trained too (default: whole clips only).")] = None,
    init: Annotated[Optional[str], typer.Option(help="train-semantic run to start from (its EMA weights; same --preset): a fine-tune with a fresh optimiser and schedule, e.g. on new data. Or wan:PATH: Wan2.1's blocks (diffusers WanTransformer3DModel folder; --preset is then Wan's), with a fresh input and output projection for the compressed channels.")] = None,
    steps: T.Steps = 1000,
    batch_size: T.BatchSize = 8,
    grad_accum: T.GradAccum = 1,
    lr: T.Lr = 1e-4,
    warmup: T.Warmup = 0,
    schedule: T.Schedule = "constant",
    weight_decay: T.WeightDecay = 0.0,
    grad_clip: T.GradClip = 1.0,
    ema_decay: T.EmaDecay = 0.999,
    precision: T.Precision = "auto",
    save_every: T.SaveEvery = 500,
    keep_last: T.KeepLast = 3,
    seed: T.Seed = 0,
    num_workers: T.Workers = 0,
    resume: T.Resume = False,
    allow_new_data: T.AllowNewData = False,
    config: T.ConfigFile = None,
    fsdp: T.Fsdp = False,
    gradient_checkpointing: T.GradientCheckpointing = False,
    ema_start: T.EmaStart = 0,
    async_save: T.AsyncSave = False,
    attention_backend: T.AttentionBackend = "auto",
    compile: T.Compile = False,
    dry_run: T.DryRun = False,
    report_to: T.ReportTo = None,
    val_clips: T.ValClips = 0,
    val_every: T.ValEvery = 0,
    sample_every: T.SampleEvery = 0,
    sample_steps: T.SampleSteps = 10,
    val_prompts: Annotated[Optional[Path], typer.Option(help="Prompts (one a line) the --sample-every videos render through this run and --latent-run (default: the held-out clips' captions).")] = None,
) -> None:
    """Stage 2 (paper §3.2, §3.4): train the semantic DiT to generate compressed semantic tokens from text, with full attention over whole clips.

    The semantic encoder and the latent run's compressor are frozen. On a --condition vae latent run it learns that run's compressed VAE latents instead (the Fig. 9 ablation). Writes OUT/config.json, OUT/metrics.jsonl and OUT/checkpoints/step-*/; --resume continues exactly.
    """
    from semgen_cli.cli._common import RichReporter, settings_table, summary
    from semgen_cli.steps.train_semantic import TrainSemanticConfig, train_semantic

    cfg = TrainSemanticConfig(data=str(data), latent_run=str(latent_run), out=str(out), preset=preset, text_dropout=text_dropout, shift=shift, max_seconds=max_seconds, windows=T.parse_seconds_list(windows, "--windows"), init=init,
                              gradient_checkpointing=gradient_checkpointing, attention_backend=attention_backend, compile=compile)
    train_cfg = T.train_config(steps, batch_size, grad_accum, lr, warmup, schedule, weight_decay, grad_clip, ema_decay, precision, save_every, keep_last, seed, num_workers, sample_every,
                               ema_start=ema_start, async_save=async_save, fsdp=fsdp)
    monitor = T.monitor_config(report_to, val_clips, val_every, sample_steps, val_prompts)
    settings_table("semgen train-semantic", {
        "data": data, "latent run": latent_run, "out": out, "preset": f"Wan's ({init})" if init and init.startswith("wan:") else preset, "attention": "full (whole clips)", "windows": f"{windows} s" if windows else "—",
        "init": init or "—", "steps": steps, "batch": batch_size, "lr": lr, "ema": ema_decay, "precision": train_cfg.precision, "seed": seed, "resume": resume,
        **({"gradient checkpointing": True} if gradient_checkpointing else {}),
        **({"attention backend": attention_backend} if attention_backend != "auto" else {}), **({"compile": "each DiT block"} if compile else {}),
    })
    if dry_run:
        return T.dry_run("semgen train-semantic", train_cfg)
    with RichReporter() as reporter:
        result, config = train_semantic(cfg, train_cfg, resume=resume, reporter=reporter, resume_hint=T.resume_hint(sys.argv[1:]), fsdp=fsdp, allow_new_data=allow_new_data, monitor=monitor)
    rows = {"step": result.step, "loss": result.loss, "checkpoint": result.checkpoint, "metrics": result.metrics, "time": f"{result.seconds:.1f} s"}
    if result.interrupted:  # saved; exit 130 so that `train-latent … && train-semantic …` stops here
        rows["stopped early"] = T.resume_hint(sys.argv[1:])
        summary("stage 2", rows)
        raise typer.Exit(T.INTERRUPTED)
    summary("stage 2", rows, next_command=f'semgen generate "a red circle moving right on a navy background" --latent-run {latent_run} --semantic-run {out} --seconds 10 --out out.mp4')

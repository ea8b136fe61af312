"""`semgen train-semantic`: stage 2, the semantic DiT (compressed semantics | text)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from semgen_cli.cli import _train as T
from semgen_cli.cli.options import Defaults

D = Defaults("semgen_cli.steps.train_semantic", "TrainSemanticConfig")


def command(
    data: Annotated[Path, typer.Argument(help="Shard folder from `semgen extract`.")],
    latent_run: Annotated[Path, typer.Option(help="train-latent run folder; its compressor is frozen and reused.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = Path(D.out),
    preset: T.Preset = D.preset,
    text_dropout: Annotated[float, typer.Option(help="Probability of dropping the text (for CFG).")] = D.text_dropout,
    shift: Annotated[Optional[float], typer.Option(help="Timestep shift (default: RAE's sqrt(elements/4096)).")] = D.shift,
    max_seconds: Annotated[Optional[float], typer.Option(help="Cut clips longer than this (default: whole clips).")] = D.max_seconds,
    windows: Annotated[Optional[str], typer.Option(help="Also train on windows of these lengths in seconds, comma-separated (e.g. 10,20,40), cut from every longer clip at half-window strides, so durations between the data's clip lengths are trained too (default: whole clips only).")] = ",".join(f"{w:g}" for w in D.windows) or None,
    init: Annotated[Optional[str], typer.Option(help="train-semantic run to start from (its EMA weights; same --preset): a fine-tune with a fresh optimiser and schedule, e.g. on new data. Or wan:PATH: Wan2.1's blocks (diffusers WanTransformer3DModel folder; --preset is then Wan's), with a fresh input and output projection for the compressed channels.")] = D.init,
    lora_rank: T.LoraRank = D.lora_rank,
    lora_alpha: T.LoraAlpha = D.lora_alpha,
    lora_targets: T.LoraTargets = D.lora_targets,
    steps: T.Steps = T.TRAIN.steps,
    batch_size: T.BatchSize = T.TRAIN.batch_size,
    grad_accum: T.GradAccum = T.TRAIN.grad_accum,
    lr: T.Lr = T.TRAIN.lr,
    warmup: T.Warmup = T.TRAIN.warmup_steps,
    schedule: T.Schedule = T.TRAIN.schedule,
    weight_decay: T.WeightDecay = T.TRAIN.weight_decay,
    grad_clip: T.GradClip = T.TRAIN.grad_clip,
    ema_decay: T.EmaDecay = T.TRAIN.ema_decay,
    precision: T.Precision = T.TRAIN.precision,
    save_every: T.SaveEvery = T.TRAIN.save_every,
    keep_last: T.KeepLast = T.TRAIN.keep_last,
    seed: T.Seed = T.TRAIN.seed,
    num_workers: T.Workers = T.TRAIN.num_workers,
    resume: T.Resume = False,
    allow_new_data: T.AllowNewData = False,
    config: T.ConfigFile = None,
    fsdp: T.Fsdp = False,
    gradient_checkpointing: T.GradientCheckpointing = D.gradient_checkpointing,
    ema_start: T.EmaStart = T.TRAIN.ema_start,
    async_save: T.AsyncSave = T.TRAIN.async_save,
    attention_backend: T.AttentionBackend = D.attention_backend,
    compile: T.Compile = D.compile,
    dry_run: T.DryRun = False,
    report_to: T.ReportTo = None,
    val_clips: T.ValClips = T.MONITOR.val_clips,
    val_every: T.ValEvery = T.MONITOR.val_every,
    sample_every: T.SampleEvery = T.TRAIN.sample_every,
    sample_steps: T.SampleSteps = T.MONITOR.sample_steps,
    val_prompts: Annotated[Optional[Path], typer.Option(help="Prompts (one a line) the --sample-every videos render through this run and --latent-run (default: the held-out clips' captions).")] = None,
) -> None:
    """Stage 2 (paper §3.2, §3.4): train the semantic DiT to generate compressed semantic tokens from text, with full attention over whole clips.

    The semantic encoder and the latent run's compressor are frozen. On a --condition vae latent run it learns that run's compressed VAE latents instead (the Fig. 9 ablation). Writes OUT/config.json, OUT/metrics.jsonl and OUT/checkpoints/step-*/; --resume continues exactly.
    """
    from semgen_cli.cli._common import RichReporter, settings_table, summary
    from semgen_cli.steps.train_semantic import TrainSemanticConfig, train_semantic

    cfg = TrainSemanticConfig(data=str(data), latent_run=str(latent_run), out=str(out), preset=preset, text_dropout=text_dropout, shift=shift, max_seconds=max_seconds, windows=T.parse_seconds_list(windows, "--windows"), init=init,
                              lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets,
                              gradient_checkpointing=gradient_checkpointing, attention_backend=attention_backend, compile=compile)
    train_cfg = T.train_config(steps, batch_size, grad_accum, lr, warmup, schedule, weight_decay, grad_clip, ema_decay, precision, save_every, keep_last, seed, num_workers, sample_every,
                               ema_start=ema_start, async_save=async_save, fsdp=fsdp)
    monitor = T.monitor_config(report_to, val_clips, val_every, sample_steps, val_prompts)
    T.check_inputs(data, {"--latent-run": (latent_run, "train-latent"), "--init": (None if resume or init is None or cfg.init_wan else init, "train-semantic")})
    settings_table("semgen train-semantic", {
        "data": data, "latent run": latent_run, "out": out, "preset": f"Wan's ({init})" if init and init.startswith("wan:") else preset, "attention": "full (whole clips)", "windows": f"{windows} s" if windows else "—",
        "init": init or "—", "steps": steps, "batch": batch_size, "lr": lr, "ema": ema_decay, "precision": train_cfg.precision, "seed": seed, "resume": resume,
        **({"gradient checkpointing": True} if gradient_checkpointing else {}),
        **({"attention backend": attention_backend} if attention_backend != "auto" else {}), **({"compile": "each DiT block"} if compile else {}),
        **({"LoRA": f"rank {lora_rank}, alpha {lora_alpha or lora_rank}, on {lora_targets or 'attention + FFN'}"} if lora_rank else {}),
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

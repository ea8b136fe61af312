"""`semgen train-latent`: stage 1, the latent DiT (VAE latents | compressed semantics, text)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from semgen_cli.cli import _train as T
from semgen_cli.cli.options import Defaults, choice, constant

D = Defaults("semgen_cli.steps.train_latent", "TrainLatentConfig")
CONDITIONS = constant("semgen_cli.steps.train_latent", "CONDITIONS")


def command(
    data: Annotated[Path, typer.Argument(help="Shard folder from `semgen extract`.")],
    compressor: Annotated[Optional[Path], typer.Option(help="fit-compressor run folder (not needed with --condition none, nor with --init RUN: then RUN's compressor).")] = D.compressor,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = Path(D.out),
    preset: T.Preset = D.preset,
    attention: Annotated[str, typer.Option(help=f"{' or '.join(T.ATTENTION_KINDS)}; swin: shifted windows along time, linear in length.", callback=choice("--attention", T.ATTENTION_KINDS))] = D.attention,
    window: Annotated[Optional[int], typer.Option(help="Swin window T_w in latent frames (default: the smallest in which every window, plain and shifted, of every video holds a semantic frame at the data's rates; a fine-tune or resume keeps the run's).")] = D.window,
    condition: Annotated[str, typer.Option(help=f"{', '.join(CONDITIONS)}: SemanticGen, the Fig. 9 ablation, Base-CT / Base-CT-Swin.")] = D.condition,
    freeze_compressor: Annotated[bool, typer.Option("--freeze-compressor", help="Do not fine-tune the compressor jointly.")] = D.freeze_compressor,
    clip_seconds: Annotated[Optional[float], typer.Option(help="Training window in seconds (default: the shortest sample).")] = D.clip_seconds,
    semantic_noise: Annotated[float, typer.Option(help="Max σ of the noise added to semantic tokens in training (RAE).")] = D.semantic_noise,
    text_dropout: Annotated[float, typer.Option(help="Probability of dropping the text (for CFG).")] = D.text_dropout,
    shift: Annotated[Optional[float], typer.Option(help="Timestep shift of training and sampling (default: Wan's 3.0 for 480p / 5.0 for 720p with --init wan:PATH, the init run's with --init RUN, else RAE's sqrt(elements/4096), at least 1).")] = D.shift,
    text_padding: Annotated[Optional[str], typer.Option(help="mask: captions' real tokens and a mask; wan: zero-padded to the text encoder's length with no mask, as Wan's pipeline feeds UMT5 (default: wan with --init wan:PATH, the init run's with --init RUN, else mask).")] = D.text_padding,
    motion_weight: Annotated[float, typer.Option(help="Weight α of moving latent positions in the loss: 1 + α·(their change between frames / its batch mean); 0: plain MSE.")] = D.motion_weight,
    init: Annotated[Optional[str], typer.Option(help="wan:PATH — start from Wan2.1 weights (diffusers folder); or a train-latent run folder — fine-tune its EMA DiT (same --preset and compressor), e.g. on the latents of a new VAE.")] = D.init,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="Recompute activations in backward.")] = D.gradient_checkpointing,
    patch: Annotated[Optional[str], typer.Option(help="DiT patch T,H,W in latent cells (default: the preset's 1,2,2). 1,1,1 makes one token per latent cell (4× the tokens). With --init RUN of a coarser patch, RUN's patch embedding and head are resized to it.")] = D.patch,
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
    report_to: T.ReportTo = None,
    val_clips: T.ValClips = T.MONITOR.val_clips,
    val_every: T.ValEvery = T.MONITOR.val_every,
    sample_every: T.SampleEvery = T.TRAIN.sample_every,
    sample_steps: T.SampleSteps = T.MONITOR.sample_steps,
    ema_start: T.EmaStart = T.TRAIN.ema_start,
    async_save: T.AsyncSave = T.TRAIN.async_save,
    attention_backend: T.AttentionBackend = D.attention_backend,
    compile: T.Compile = D.compile,
    dry_run: T.DryRun = False,
) -> None:
    """Stage 1 (paper §3.2, §3.4): train the latent DiT on VAE latents, conditioned in context on compressed semantic tokens and by cross-attention on text.

    The compressor is fine-tuned jointly with its KL term unless --freeze-compressor. Writes OUT/config.json, OUT/metrics.jsonl and OUT/checkpoints/step-*/; --resume continues exactly. Runs under `torchrun --nproc_per_node=K` for DDP.
    """
    from semgen_cli.cli._common import RichReporter, settings_table, summary
    from semgen_cli.steps.train_latent import TrainLatentConfig, resolve_shift, resolve_text, train_latent

    cfg = TrainLatentConfig(
        data=str(data), out=str(out), compressor=str(compressor) if compressor else None, preset=preset,
        attention=attention, window=window, condition=condition, freeze_compressor=freeze_compressor,
        clip_seconds=clip_seconds, semantic_noise=semantic_noise, text_dropout=text_dropout, shift=shift,
        init=init, gradient_checkpointing=gradient_checkpointing, motion_weight=motion_weight, patch=_patch(patch),
        text_padding=text_padding, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets,
        attention_backend=attention_backend, compile=compile,
    )
    train_cfg = T.train_config(steps, batch_size, grad_accum, lr, warmup, schedule, weight_decay, grad_clip, ema_decay, precision, save_every, keep_last, seed, num_workers, sample_every,
                               ema_start=ema_start, async_save=async_save, fsdp=fsdp)
    monitor = T.monitor_config(report_to, val_clips, val_every, sample_steps)
    if not resume:  # a resumed run needs neither: its checkpoint holds their weights
        T.check_inputs(data, {"--compressor": (compressor if condition != "none" else None, "fit-compressor"), "--init": (cfg.init_run, "train-latent")})
    shift_used, shift_rule = resolve_shift(cfg, resume=resume)
    text_used = resolve_text(cfg, resume=resume)
    settings_table("semgen train-latent", {
        "data": data, "compressor": compressor or (f"that of {init}" if init and condition != "none" else "—"), "out": out, "preset": preset,
        "attention": f"{attention} (T_w={window or 'from the data'})" if attention == "swin" else attention, "condition": condition,
        "compressor training": "frozen" if freeze_compressor else "joint (KL)",
        "timestep shift": f"{shift_used:.3g} ({shift_rule})",
        "text": f"Wan's: zero-padded to {text_used['length']} tokens, no mask" if text_used["padding"] == "wan" else "real tokens + mask",
        "steps": steps, "batch": batch_size,
        "lr": lr, **({"motion weight": motion_weight} if motion_weight else {}), **({"patch": patch} if patch else {}), "ema": ema_decay, "precision": train_cfg.precision, "seed": seed, "resume": resume,
        **({"attention backend": attention_backend} if attention_backend != "auto" else {}), **({"compile": "each DiT block"} if compile else {}),
        **({"LoRA": f"rank {lora_rank}, alpha {lora_alpha or lora_rank}, on {lora_targets or 'attention + FFN'}"} if lora_rank else {}),
    })
    if dry_run:
        return T.dry_run("semgen train-latent", train_cfg)
    with RichReporter() as reporter:
        result, config = train_latent(cfg, train_cfg, resume=resume, reporter=reporter, resume_hint=T.resume_hint(sys.argv[1:]), fsdp=fsdp, allow_new_data=allow_new_data, monitor=monitor)
    rows = {"step": result.step, "loss": result.loss, "checkpoint": result.checkpoint, "metrics": result.metrics, "time": f"{result.seconds:.1f} s"}
    if result.interrupted:  # saved; exit 130 so that `train-latent … && train-semantic …` stops here
        rows["stopped early"] = T.resume_hint(sys.argv[1:])
        summary("stage 1", rows)
        raise typer.Exit(T.INTERRUPTED)
    next_command = f"semgen train-semantic {data} --latent-run {out} --out {out.parent / 'semantic'}"
    if condition == "none":  # Base-CT: a text-to-video model, sampled alone
        next_command = f'semgen generate "a red circle moving right on a navy background" --latent-run {out} --seconds 10 --out out.mp4'
    summary("stage 1", rows, next_command=next_command)


def _patch(text: str | None) -> tuple[int, ...] | None:
    """`--patch 1,1,1` → (1, 1, 1); TrainLatentConfig checks that it is three positive sizes."""
    from semgen_cli.errors import ConfigError

    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--patch must be three positive integers T,H,W (e.g. 1,1,1), got {text!r}") from None

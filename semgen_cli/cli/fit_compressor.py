"""`semgen fit-compressor`: fit the semantic compressor as a KL autoencoder on extracted features."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from semgen_cli.cli import _train as T
from semgen_cli.cli.options import Defaults, constant

D = Defaults("semgen_cli.steps.fit_compressor", "FitCompressorConfig")
FEATURES = constant("semgen_cli.steps.fit_compressor", "FEATURES")


def command(
    data: Annotated[Path, typer.Argument(help="Shard folder from `semgen extract`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = Path(D.out),
    dim: Annotated[str, typer.Option(help="Compressed width (paper: 8; ablations 64 and none = raw features).")] = str(D.dim).lower(),
    hidden: Annotated[int, typer.Option(help="Hidden width of the MLP.")] = D.hidden,
    kl_weight: Annotated[float, typer.Option(help="Weight of the KL term.")] = D.kl_weight,
    features: Annotated[str, typer.Option(help=f"{' or '.join(FEATURES)}; vae: the compressed-VAE ablation (paper Fig. 9: VAE latents cut into the semantic tokens' grid and rate, one token per semantic token; docs/baselines.md).")] = D.features,
    tokens_per_sample: Annotated[int, typer.Option(help="Feature tokens drawn per sample per batch item.")] = D.tokens_per_sample,
    steps: T.Steps = T.COMPRESSOR_TRAIN.steps,
    batch_size: T.BatchSize = T.COMPRESSOR_TRAIN.batch_size,
    grad_accum: T.GradAccum = T.COMPRESSOR_TRAIN.grad_accum,
    lr: T.Lr = T.COMPRESSOR_TRAIN.lr,
    warmup: T.Warmup = T.COMPRESSOR_TRAIN.warmup_steps,
    schedule: T.Schedule = T.COMPRESSOR_TRAIN.schedule,
    weight_decay: T.WeightDecay = T.COMPRESSOR_TRAIN.weight_decay,
    grad_clip: T.GradClip = T.COMPRESSOR_TRAIN.grad_clip,
    ema_decay: T.EmaDecay = T.COMPRESSOR_TRAIN.ema_decay,
    precision: T.Precision = T.COMPRESSOR_TRAIN.precision,
    save_every: T.SaveEvery = T.COMPRESSOR_TRAIN.save_every,
    keep_last: T.KeepLast = T.COMPRESSOR_TRAIN.keep_last,
    seed: T.Seed = T.COMPRESSOR_TRAIN.seed,
    num_workers: T.Workers = T.COMPRESSOR_TRAIN.num_workers,
    resume: T.Resume = False,
    allow_new_data: T.AllowNewData = False,
    config: T.ConfigFile = None,
    ema_start: T.EmaStart = T.COMPRESSOR_TRAIN.ema_start,
    dry_run: T.DryRun = False,
    report_to: T.ReportTo = None,
) -> None:
    """Fit the MLP compressor (mean, logvar; KL) on extracted semantic features (paper §3.2).

    Writes OUT/config.json, OUT/compressor.safetensors (weights + normalisation statistics of the compressed space) and the training checkpoints. `--dim none` only measures the statistics of the raw features.
    """
    from semgen_cli.cli._common import RichReporter, settings_table, summary
    from semgen_cli.errors import ConfigError
    from semgen_cli.steps.fit_compressor import FitCompressorConfig, fit_compressor

    if dim.lower() == "none":
        dim_value = None
    else:
        try:
            dim_value = int(dim)
        except ValueError:
            raise ConfigError(f"--dim {dim!r}: expected a positive integer or none") from None
    cfg = FitCompressorConfig(data=str(data), out=str(out), dim=dim_value, hidden=hidden, kl_weight=kl_weight, features=features, tokens_per_sample=tokens_per_sample)
    train_cfg = T.train_config(steps, batch_size, grad_accum, lr, warmup, schedule, weight_decay, grad_clip, ema_decay, precision, save_every, keep_last, seed, num_workers, ema_start=ema_start)
    monitor = T.monitor_config(report_to)
    T.check_inputs(data)
    settings_table("semgen fit-compressor", {"data": data, "out": out, "dim": dim, "features": features, "hidden": hidden, "kl weight": kl_weight, "steps": steps if dim_value else "none (stats only)", "batch": f"{batch_size} × {tokens_per_sample} tokens", "lr": lr})
    if dry_run:
        return T.dry_run("semgen fit-compressor", train_cfg)
    with RichReporter() as reporter:
        result = fit_compressor(cfg, train_cfg, resume=resume, reporter=reporter, resume_hint=T.resume_hint(sys.argv[1:]), allow_new_data=allow_new_data, monitor=monitor)
    if result.get("interrupted"):
        summary("compressor", {"step": result["steps_trained"], "stopped early": T.resume_hint(sys.argv[1:])})
        raise typer.Exit(T.INTERRUPTED)
    summary("compressor", {
        "written": out / "compressor.safetensors", "fingerprint": result["fingerprint"],
        "in → out": f"{result['compressor']['in_dim']} → {result['compressor']['dim'] or 'none'}",
        "final loss": result.get("final_loss", "—"),
    }, next_command=f"semgen train-latent {data} --compressor {out}{' --condition vae' if features == 'vae' else ''} --out {out.parent / 'latent'}")

"""`semgen generate`: text → semantic plan (stage 2) → VAE latents (stage 1) → mp4."""

from __future__ import annotations

import functools
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from semgen_cli.cli._train import AttentionBackend, Compile
from semgen_cli.cli.options import choice, constant
from semgen_cli.steps.generate import GenerateConfig

ATTENTION_KINDS = constant("semgen_cli.models.dit", "ATTENTION_KINDS")

Run = Annotated[Optional[Path], typer.Option(file_okay=False, show_default=False)]


def _one_line_per_failure(command):
    """Under torchrun every rank runs the command: an error every rank shares (a flag, a run, or one
    the ranks agreed on after loading) is printed by rank 0 alone; a rank's own later failure is
    printed by that rank, named; a rank whose peer failed stops with one line saying so."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from semgen_cli.errors import ConfigError, SemgenError
        from semgen_cli.parallel import past_agreement, world

        rank, size = world()
        try:
            return command(*args, **kwargs)
        except SemgenError as err:
            if size > 1 and getattr(err, "shared", not past_agreement()):
                if rank:
                    raise SystemExit(err.exit_code) from None
                raise
            if size > 1:
                raise type(err)(f"rank {rank} of {size}: {err}") from None
            raise
        except RuntimeError as err:
            if size > 1 and (type(err).__name__ == "DistBackendError" or "Connection closed by peer" in str(err)):
                raise ConfigError(f"rank {rank} of {size}: stopped, another rank failed or left ({str(err).splitlines()[0][:120]})") from None
            raise

    return run


@_one_line_per_failure
def command(
    prompt: Annotated[Optional[str], typer.Argument(help="What the video shows (or use --prompts-file).", show_default=False)] = None,
    seconds: Annotated[Optional[str], typer.Option(help="Duration in seconds, e.g. 60 or 1.5 (default: the length the semantic run was trained on, or the --semantic-from video's).", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="mp4 to write; with --prompts-file, OUT-000.mp4, OUT-001.mp4, …", dir_okay=False)] = Path(GenerateConfig.out),
    latent_run: Annotated[Optional[Path], typer.Option(help="train-latent run (stage 1). Default: the bundled pipeline.", file_okay=False, show_default=False)] = GenerateConfig.latent_run,
    semantic_run: Annotated[Optional[Path], typer.Option(help="train-semantic run (stage 2). Default: the bundled pipeline. Not with a Base-CT latent run (--condition none), which samples from the text alone.", file_okay=False, show_default=False)] = GenerateConfig.semantic_run,
    seed: Annotated[int, typer.Option(help="Seed of all noise; the same seed gives the same frames.")] = GenerateConfig.seed,
    steps: Annotated[Optional[int], typer.Option(help=f"Euler steps of both stages (default: {GenerateConfig.semantic_steps} for stage 2, {GenerateConfig.latent_steps} for stage 1).", show_default=False)] = None,
    semantic_steps: Annotated[Optional[int], typer.Option(help=f"Euler steps of stage 2 (overrides --steps; default {GenerateConfig.semantic_steps}).", show_default=False)] = None,
    latent_steps: Annotated[Optional[int], typer.Option(help=f"Euler steps of stage 1 (overrides --steps; default {GenerateConfig.latent_steps}).", show_default=False)] = None,
    cfg: Annotated[Optional[float], typer.Option("--cfg", help=f"CFG scale of both stages (default: {GenerateConfig.semantic_cfg:g} for stage 2, {GenerateConfig.latent_cfg:g} for stage 1; 1 = off).", show_default=False)] = None,
    semantic_cfg: Annotated[Optional[float], typer.Option(help=f"CFG scale of stage 2 (overrides --cfg; default {GenerateConfig.semantic_cfg:g}).", show_default=False)] = None,
    latent_cfg: Annotated[Optional[float], typer.Option(help=f"CFG scale of stage 1 (overrides --cfg; default {GenerateConfig.latent_cfg:g}).", show_default=False)] = None,
    semantic_noise: Annotated[Optional[float], typer.Option(help="σ of the noise on the plan given to stage 1 (default: half the σ max the latent run was trained with).", show_default=False)] = GenerateConfig.semantic_noise,
    fps: Annotated[Optional[float], typer.Option(help="Frame rate (default: the runs' training fps).", show_default=False)] = GenerateConfig.fps,
    size: Annotated[Optional[str], typer.Option(help="HxW or N (default: the training size); multiples of VAE stride × patch.", show_default=False)] = GenerateConfig.size,
    prompts_file: Annotated[Optional[Path], typer.Option(help="Text file, one prompt per line: one mp4 each, numbered.", dir_okay=False, show_default=False)] = None,
    save_semantics: Annotated[bool, typer.Option("--save-semantics", help="Also write the plan as OUT.semantic.safetensors.")] = GenerateConfig.save_semantics,
    semantic_from: Annotated[Optional[Path], typer.Option(help="Reference mp4 (or a saved .semantic.safetensors): skip stage 2 and use its semantic plan (paper Fig. 4).", dir_okay=False, show_default=False)] = GenerateConfig.semantic_from,
    attention: Annotated[Optional[str], typer.Option(help=f"Override stage 1's attention: {' or '.join(ATTENTION_KINDS)} (default: as trained).", show_default=False, callback=choice("--attention", ATTENTION_KINDS, optional=True))] = GenerateConfig.attention,
    vae: Annotated[Optional[str], typer.Option(help="Decode with this VAE (wan:PATH, toy, …) instead of the runs' own: it must share their encoder (same latents), e.g. a retrained or wider decoder.", show_default=False)] = GenerateConfig.vae,
    decode_chunk: Annotated[int, typer.Option(help="Latent frames per VAE decode call (memory stays flat in the length).")] = GenerateConfig.decode_chunk,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N, mps.")] = GenerateConfig.device,
    dtype: Annotated[str, typer.Option(help="DiT dtype: auto (bfloat16 on CUDA, else float32), float32, bfloat16, float16.")] = GenerateConfig.dtype,
    attention_backend: AttentionBackend = GenerateConfig.attention_backend,
    compile: Compile = GenerateConfig.compile,
    parallel: Annotated[str, typer.Option(help="Under torchrun --nproc_per_node=K: auto, none, prompt (ranks take prompts in turn), guidance (CFG passes on 2 ranks), window (stage 1 split by shifted windows), guidance+window. See docs/multigpu.md.")] = GenerateConfig.parallel,
) -> None:
    """Generate a video from text (paper §3.3, §3.4): stage 2 plans compressed semantic tokens for the whole duration with full attention, stage 1 renders VAE latents over the whole duration with shifted-window attention conditioned on that plan, and the VAE decodes chunk by chunk straight into the mp4.

    Writes OUT (prompt, seed and settings in its metadata) and OUT.json beside it. Durations longer than the semantic run was trained on work, with a warning that it extrapolates.

    Baselines (docs/baselines.md): a Base-CT / Base-CT-Swin latent run (train-latent --condition none) samples alone with --latent-run RUN; a --condition vae latent run pairs with the semantic run trained on it (the compressed-VAE space of Fig. 9).

    Example: semgen generate "a red circle moving left on a black background" --seconds 60 --latent-run runs/latent --semantic-run runs/semantic --out out.mp4
    """
    from semgen_cli.cli.options import parse_size
    from semgen_cli.errors import ConfigError
    from semgen_cli.steps.generate import MAX_STEPS, read_prompts, resolve

    # 1. flags -> config, refused before anything loads (one line, exit 2)
    if prompt is not None and prompts_file is not None:
        raise ConfigError("give a prompt or --prompts-file, not both")
    if prompt is None and prompts_file is None:
        raise ConfigError('no prompt: semgen generate "a red circle moving left on a black background" --out out.mp4 (or --prompts-file)')
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"--steps must be from 1 to {MAX_STEPS}, got {steps}")
    if cfg is not None and not cfg >= 0:
        raise ConfigError(f"--cfg must be >= 0 (1 = no guidance), got {cfg}")
    config = GenerateConfig(
        prompts=read_prompts(prompts_file) if prompts_file is not None else [prompt],
        out=str(out),
        seconds=_seconds(seconds),
        latent_run=str(latent_run) if latent_run else None,
        semantic_run=str(semantic_run) if semantic_run else None,
        seed=seed,
        semantic_steps=_pick(semantic_steps, steps, GenerateConfig.semantic_steps),
        latent_steps=_pick(latent_steps, steps, GenerateConfig.latent_steps),
        semantic_cfg=_pick(semantic_cfg, cfg, GenerateConfig.semantic_cfg),
        latent_cfg=_pick(latent_cfg, cfg, GenerateConfig.latent_cfg),
        semantic_noise=semantic_noise,
        fps=fps,
        size=parse_size(size),
        save_semantics=save_semantics,
        semantic_from=str(semantic_from) if semantic_from else None,
        device=device,
        dtype=dtype,
        decode_chunk=decode_chunk,
        attention=attention,
        vae=vae,
        attention_backend=attention_backend,
        compile=compile,
        parallel=parallel,
    )
    resolved = resolve(config)
    from semgen_cli.parallel import plan_for

    ranks = plan_for(config, resolved)  # joins torchrun's process group; one rank in a plain process

    # 2. settings, progress, summary
    import torch  # noqa: F401  (imported after the flags are checked: `semgen generate --help` stays instant)

    from contextlib import nullcontext

    from semgen_cli.cli._common import RichReporter, settings_table, summary
    from semgen_cli.reporting import NULL
    from semgen_cli.steps.generate import generate

    rows = resolved.settings(config)
    rows = {"prompt" if len(config.prompts) == 1 else "prompts": config.prompts[0] if len(config.prompts) == 1 else f"{len(config.prompts)} from {prompts_file}", **rows}
    rows["ranks"] = ranks.describe()
    if ranks.rank == 0:  # under torchrun rank 0 speaks for all
        settings_table("semgen generate", rows)
    # SIGTERM unwinds like an error, so that the temp files of an unfinished video are removed
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        with RichReporter() if ranks.rank == 0 else nullcontext(NULL) as reporter:
            result = generate(config, reporter, resolved)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if ranks.rank != 0:
        return

    mib = 1024 * 1024
    rows = {}
    for v in result.videos:
        rows[str(v.path)] = f"{v.seconds:g} s, {v.frames} frames at {v.fps:g} fps, seed {v.seed}" + (f", plan {v.semantics}" if v.semantics else "")
    last = result.videos[-1]
    rows["sidecar"] = ", ".join(str(v.sidecar) for v in result.videos) if len(result.videos) <= 3 else f"{result.videos[0].sidecar} … ({len(result.videos)})"
    rows["time"] = f"load {result.load_seconds:.1f} s; " + ", ".join(f"{k} {s:.1f} s" for k, s in last.seconds_per_stage.items()) + (" (last video)" if len(result.videos) > 1 else "")
    rows["peak memory"] = f"{result.peak_memory / mib:.0f} MiB ({result.memory_kind}); " + ", ".join(
        f"{k} +{m['above_start'] / mib:.0f} MiB" for k, m in last.memory_per_stage.items()
    )
    rows["pipeline"] = f"{result.pipeline}: latent {result.latent_run}" + (f", semantic {result.semantic_run}" if result.semantic_run else "")
    rows["components"] = ", ".join(f"{role} {fp}" for role, fp in result.components.items())
    rows["device"] = f"{result.device}, {result.dtype}"
    rows["ranks"] = ranks.describe()
    summary("generated", rows, next_command=result.drift_command)


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def _pick(specific, both, default):
    return specific if specific is not None else both if both is not None else default


def _seconds(text: str | None) -> float | None:
    """--seconds as given: a positive number (checked by GenerateConfig)."""
    from semgen_cli.errors import ConfigError

    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--seconds {text!r}: expected a number of seconds, e.g. 60 or 1.5") from None
    return value

"""`semgen toy-eval`: generate toy-world videos and score them with the pixel-exact judge."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from semgen_cli.cli.options import Defaults, keyword_default

D = Defaults("semgen_cli.steps.toy_eval", "ToyEvalConfig")
COUNT = keyword_default("semgen_cli.toy.prompts", "default_prompts", "count")


def command(
    prompts: Annotated[Optional[Path], typer.Option(help="File of toy-grammar prompts, one per line (default: the built-in ones, --count of them).")] = None,
    seconds: Annotated[float, typer.Option(help="Duration of each video.")] = D.seconds,
    pipeline: Annotated[Optional[Path], typer.Option(help="A pipeline.json (as examples/toy/bundle.py writes) naming the runs to score (default: the bundled one).")] = None,
    latent_run: Annotated[Optional[Path], typer.Option(help="train-latent run (default: the bundled pipeline).")] = D.latent_run,
    semantic_run: Annotated[Optional[Path], typer.Option(help="train-semantic run (default: the bundled pipeline; none for a Base-CT latent run, --condition none).")] = D.semantic_run,
    count: Annotated[int, typer.Option(help="How many built-in prompts (held-out combinations first).")] = COUNT,
    seed: Annotated[int, typer.Option(help="Seed of the first prompt's generation; prompt i uses seed + i.")] = D.seed,
    steps: Annotated[Optional[int], typer.Option(help="Euler steps per stage (default: generate's).")] = D.steps,
    semantic_cfg: Annotated[Optional[float], typer.Option(help="CFG scale of stage 2 (default: generate's).")] = D.semantic_cfg,
    latent_cfg: Annotated[Optional[float], typer.Option(help="CFG scale of stage 1 (default: generate's).")] = D.latent_cfg,
    semantic_noise: Annotated[Optional[float], typer.Option(help="σ of the noise on the plan given to stage 1 (default: generate's).")] = D.semantic_noise,
    vae: Annotated[Optional[str], typer.Option(help="Decode with this VAE instead of the pipeline's own (it must share its encoder; see generate --vae).", show_default=False)] = D.vae,
    keep: Annotated[Optional[Path], typer.Option(help="Keep the mp4s in this folder.")] = D.keep,
    plans: Annotated[str, typer.Option(help="stage2: the whole pipeline; rendered: skip stage 2 and give stage 1 the plan of a rendered clip of each prompt (stage 1 and the VAE alone: the pipeline's ceiling for a perfect stage 2).")] = D.plans,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON only.")] = False,
) -> None:
    """Score a pipeline on the toy world: background colour, object colour, shape and motion direction, as accuracy over frames and over videos, plus drift between the first and last 15 %.

    Held-out colour × shape × background combinations (never in the embedded default's training data) are reported on their own row.
    """
    from semgen_cli.cli._common import RichReporter, console, settings_table
    from semgen_cli.errors import ConfigError
    from semgen_cli.steps.generate import default_pipeline
    from semgen_cli.steps.toy_eval import ToyEvalConfig, read_prompt_file, toy_eval
    from semgen_cli.toy.prompts import default_prompts

    if pipeline is not None:
        if latent_run is not None or semantic_run is not None:
            raise ConfigError("--pipeline names the runs itself; drop --latent-run/--semantic-run")
        latent_run, semantic_run = default_pipeline(pipeline)
    prompt_list = read_prompt_file(str(prompts)) if prompts else default_prompts(count)
    cfg = ToyEvalConfig(prompts=prompt_list, seconds=seconds, latent_run=str(latent_run) if latent_run else None,
                        semantic_run=str(semantic_run) if semantic_run else None, seed=seed, steps=steps,
                        semantic_cfg=semantic_cfg, latent_cfg=latent_cfg, semantic_noise=semantic_noise, keep=str(keep) if keep else None, plans=plans, vae=vae)
    from semgen_cli.parallel import world

    if as_json or world()[0] != 0:  # under torchrun rank 0 speaks for all
        from semgen_cli.reporting import NULL

        result = toy_eval(cfg, NULL)
        if not result.rows:
            return
        sys.stdout.write(json.dumps({"pipeline": result.pipeline, "seconds": seconds, "plans": plans, "summary": result.summary, "videos": result.rows}, indent=2) + "\n")
        return
    settings_table("semgen toy-eval", {"prompts": f"{len(prompt_list)} ({prompts or 'built-in'})", "seconds": seconds, "seed": seed,
                                       "cfg": f"stage 2 {semantic_cfg if semantic_cfg is not None else 'default'}, stage 1 {latent_cfg if latent_cfg is not None else 'default'}",
                                       "plan noise σ": semantic_noise if semantic_noise is not None else "default",
                                       "pipeline": str(pipeline) if pipeline else "bundled" if not latent_run else f"{latent_run} + {semantic_run}" if semantic_run else f"{latent_run} alone",
                                       "plans": "stage 2" if plans == "stage2" else "rendered clips (stage 1 alone)"})
    with RichReporter() as reporter:
        result = toy_eval(cfg, reporter)
    from rich.table import Table

    table = Table(title=f"toy-eval ({len(result.rows)} videos × {seconds:g} s)", title_justify="left")
    table.add_column("group")
    for attr in ("background", "colour", "shape", "motion"):
        table.add_column(f"{attr} frames / videos / drift", justify="right")
    for group, summary in result.summary.items():
        n = sum(1 for r in result.rows if group == "all" or (r["held_out"] == (group == "held-out")))
        table.add_row(f"{group} ({n})", *[f"{summary[a]['frames']:.1%} / {summary[a]['videos']:.0%} / {summary[a]['drift']:+.1%}" for a in ("background", "colour", "shape", "motion")])
    console.print(table)
    console.print("frames: mean per-frame accuracy; videos: majority verdict right; drift: first-15 % minus last-15 % accuracy")

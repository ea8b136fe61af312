"""`semgen toy-eval`: generate videos for toy-world prompts and score them with the pixel judge.

The embedded default is trained on the toy world (DESIGN §6), whose ground truth is known, so
its quality is measured exactly: for each prompt, `semgen_cli.toy.judge` reads the generated
frames and scores background colour, object colour, object shape and motion direction per
frame; a video counts as right for an attribute when its majority per-frame verdict is right;
drift is the first-15 % minus last-15 % accuracy of each attribute (positive: worse at the end).
Prompt i is generated with seed `seed + i`, so the videos are independent samples (with one
shared noise, the toy pipeline's motion directions are strongly correlated across prompts).

With `plans="rendered"` stage 2 is skipped: each prompt's plan is read from a rendered clip of
that caption (`generate --semantic-from`, paper Fig. 4), the plan a perfect stage 2 would make, so
the scores are those of stage 1 and the VAE alone: the ceiling of the pipeline's stage 1.

A Base-CT / Base-CT-Swin latent run (`train-latent --condition none`) is scored alone
(`--latent-run RUN`, no semantic run): it is a text-to-video model, so it has no plans to render.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.reporting import NULL, Reporter

ATTRIBUTES = ("background", "colour", "shape", "motion")
PLANS = ("stage2", "rendered")


@dataclass
class ToyEvalConfig:
    prompts: list[str]
    seconds: float = 20.0
    latent_run: str | None = None
    semantic_run: str | None = None
    seed: int = 0
    steps: int | None = None
    semantic_cfg: float | None = None
    """CFG scale of stage 2 (None: generate's default)."""
    latent_cfg: float | None = None
    """CFG scale of stage 1 (None: generate's default)."""
    semantic_noise: float | None = None
    """σ of the noise on the plan given to stage 1 (None: generate's default)."""
    keep: str | None = None
    """Folder to keep the generated mp4s in (default: a temp folder, removed)."""
    plans: str = "stage2"
    """Where plans come from: stage2 (the whole pipeline) or rendered (clips of each caption: stage 1 alone)."""
    vae: str | None = None
    """Decode with this VAE instead of the pipeline's own (same encoder; see GenerateConfig.vae)."""

    def __post_init__(self) -> None:
        from semgen_cli.toy.world import parse_caption

        if not self.prompts:
            raise ConfigError("no prompts to evaluate")
        for p in self.prompts:
            parse_caption(p)  # every prompt must follow the toy grammar (ConfigError otherwise)
        if self.seconds <= 0:
            raise ConfigError(f"--seconds must be positive, got {self.seconds}")
        if self.plans not in PLANS:
            raise ConfigError(f"--plans {self.plans!r}: choose stage2 or rendered")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")


@dataclass
class ToyEvalResult:
    rows: list[dict]
    """One per video: prompt, held_out, path, and the judge's accuracy/correct/drift per attribute."""
    summary: dict = field(default_factory=dict)
    """Per group (all, held-out, seen): per attribute accuracy over frames, over videos, drift."""
    pipeline: str = ""
    generate_seconds: float = 0.0


def summarise(rows: list[dict]) -> dict:
    """Mean per-frame accuracy, fraction of videos right, and mean drift, per attribute."""
    out = {}
    for attr in ATTRIBUTES:
        if not rows:
            continue
        out[attr] = {
            "frames": sum(r["accuracy"][attr] for r in rows) / len(rows),
            "videos": sum(bool(r["correct"][attr]) for r in rows) / len(rows),
            "drift": sum(r["drift"][attr] for r in rows) / len(rows),
        }
    return out


def toy_eval(cfg: ToyEvalConfig, reporter: Reporter = NULL) -> ToyEvalResult:
    from semgen_cli.steps.generate import GenerateConfig
    from semgen_cli.toy.judge import judge_video
    from semgen_cli.toy.prompts import is_held_out

    if cfg.plans == "rendered" and cfg.latent_run:
        from semgen_cli.runs import LatentRun

        if LatentRun.from_dir(cfg.latent_run, "--latent-run").condition == "none":
            raise ConfigError(f"--plans rendered: --latent-run {cfg.latent_run} is a text-to-video baseline (--condition none) that takes no plan; use --plans stage2")
    from semgen_cli import parallel

    with tempfile.TemporaryDirectory() as tmp:
        # under torchrun the ranks make the prompts in turn into rank 0's folder; rank 0 judges them all
        folder = Path(cfg.keep) if cfg.keep else Path(parallel.from_rank0(tmp))
        folder.mkdir(parents=True, exist_ok=True)
        kwargs = {}
        if cfg.steps is not None:
            kwargs = {"semantic_steps": cfg.steps, "latent_steps": cfg.steps}
        flags = (("semantic_cfg", cfg.semantic_cfg), ("latent_cfg", cfg.latent_cfg), ("semantic_noise", cfg.semantic_noise))
        kwargs.update({k: v for k, v in flags if v is not None})
        gen_cfg = GenerateConfig(prompts=list(cfg.prompts), out=str(folder / "eval.mp4"), seconds=cfg.seconds,
                                 latent_run=cfg.latent_run, semantic_run=cfg.semantic_run, seed=cfg.seed, vae=cfg.vae, **kwargs)
        if cfg.plans == "stage2":
            videos, pipeline = _generate_each(gen_cfg, reporter)
        else:
            videos, pipeline = _from_rendered_plans(gen_cfg, folder, reporter)
        if parallel.world()[0] != 0:  # rank 0 judges every video; this rank's files stay until it has
            parallel.barrier()
            return ToyEvalResult([], {}, pipeline, 0.0)
        reporter.start("judge", total=len(videos), unit="videos")
        rows = []
        for video in videos:
            judged = judge_video(video.path, video.prompt).to_dict()
            rows.append({"prompt": video.prompt, "held_out": is_held_out(video.prompt), "path": str(video.path) if cfg.keep else None, **judged})
            reporter.advance("judge")
        reporter.finish("judge")
        parallel.barrier()
    summary = {"all": summarise(rows), "held-out": summarise([r for r in rows if r["held_out"]]), "seen": summarise([r for r in rows if not r["held_out"]])}
    gen_time = sum(sum(v.seconds_per_stage.values()) for v in videos)
    return ToyEvalResult(rows, {k: v for k, v in summary.items() if v}, pipeline, gen_time)


def _generate_each(gen_cfg, reporter: Reporter, references: list[str] | None = None) -> tuple[list, str]:
    """Every prompt from one loaded pipeline, prompt i with seed `seed + i` (and, given
    `references`, its plan read from references[i]) -> (videos, pipeline label)."""
    from semgen_cli.io.outputs import holding, output_paths
    from semgen_cli.steps.generate import generate_each, load

    paths = output_paths(gen_cfg.out, len(gen_cfg.prompts))
    jobs = [(prompt, gen_cfg.seed + i, references[i] if references else None) for i, prompt in enumerate(gen_cfg.prompts)]
    with holding(paths):
        pipe = load(gen_cfg, reporter)
        videos = generate_each(pipe, jobs, paths)
    return videos, pipe.r.pipeline


def _from_rendered_plans(gen_cfg, folder: Path, reporter: Reporter) -> tuple[list, str]:
    """One pipeline for all prompts, each plan read from a rendered clip of its prompt (seed [999, i]),
    at the latent run's training fps and size -> (videos, pipeline label)."""
    import numpy as np

    from semgen_cli.io.video import write_video
    from semgen_cli.runs import LatentRun
    from semgen_cli.steps.generate import default_pipeline
    from semgen_cli.toy.world import render, spec_for_caption

    latent_run = gen_cfg.latent_run or default_pipeline()[0]
    producer = LatentRun.from_dir(latent_run, "--latent-run").producer
    fps, (h, w) = float(producer["fps"]), producer["size"]
    from semgen_cli import parallel

    refs = [str(folder / f"reference-{i:03d}.mp4") for i in range(len(gen_cfg.prompts))]
    if parallel.world()[0] == 0:  # under torchrun rank 0 renders them all into the shared folder
        for i, prompt in enumerate(gen_cfg.prompts):
            spec = spec_for_caption(prompt, np.random.default_rng([999, i]), seconds=gen_cfg.seconds, fps=fps, width=w, height=h)
            write_video(refs[i], render(spec), fps=fps, crf=0, pix_fmt="yuv444p")
    parallel.barrier()
    videos, pipeline = _generate_each(replace(gen_cfg, semantic_from=refs[0], semantic_run=None), reporter, refs)
    return videos, f"{pipeline} (stage 1 on rendered plans)"


def read_prompt_file(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--prompts {p}: no such file")
    return [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]

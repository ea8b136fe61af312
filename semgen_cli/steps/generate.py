"""`semgen generate`: text → semantic plan → VAE latents → mp4 (paper §3.3 inference, §3.4 long video).

The two trained stages are chained as in the paper's Fig. 3c:

1. the text is encoded once with the text encoder both runs were trained with, trimmed to its
   real tokens (the way extract stores captions), with an all-True mask; the unconditional
   branch of CFG is zeros of the same length with an all-True mask (the trainers' text dropout).
   A run that records Wan's text padding (``"text": {"padding": "wan"}``, the default of
   ``--init wan:PATH``) gets the same tokens zero-padded to its length with no mask, and zeros of
   that length unconditionally (`run_text`);
2. stage 2 (the semantic run) plans the *whole* duration at once with full attention: Euler
   from noise to normalised compressed semantic tokens ``(1, c, Ts, hs, ws)``, with CFG;
   ``--semantic-from ref.mp4`` replaces this stage by the reference's own plan (paper Fig. 4:
   the reference is read at the semantic fps and size of the runs, encoded with the semantic
   encoder, compressed with the latent run's compressor (posterior mean) and normalised);
3. stage 1 (the latent run) renders VAE latents for the whole duration with its shifted-window
   attention, the plan in context at noise level σ (``z_sem + σ·ε``, ``semantic_sigma = σ``: the
   RAE-style noise it was trained with, fixed at inference), text by cross-attention, CFG on
   the text only (the plan is kept in both branches, as training only ever dropped the text);
4. the VAE decodes ``decode_chunk`` latent frames at a time with its causal cache carried
   between chunks, and every chunk goes straight into the ffmpeg writer, so memory in this
   stage does not grow with the length; the stream is cut at ``round(seconds · fps)`` frames.

Baselines (docs/baselines.md): a Base-CT / Base-CT-Swin latent run (``train-latent --condition
none``) has no plan: stage 2 and the plan are skipped and stage 1 renders from the text alone,
with the same outputs. A ``--condition vae`` latent run (the compressed-VAE space of Fig. 9) goes
through the same steps with compressed VAE tokens as its plan. Full attention over more tokens than
a training window held is warned about with its cost (quadratic in the length); running out of
memory in stage 1 is a one-line error.

Randomness: one CPU ``torch.Generator`` seeded by ``--seed`` draws every noise tensor (stage-1
noise first, then the plan's σ-noise, then stage-2 noise) before it moves to the device, so a
seed gives the same frames on any machine of the same kind. Because stage 2 draws last, a plan
saved with ``--save-semantics`` and given back with ``--semantic-from plan.safetensors`` and the
same seed replays the very same video, and a reference plan sees the same latent noise.

Everything a flag can get wrong is checked in :class:`GenerateConfig` and :func:`resolve`
(which reads only the runs' config.json files) before any weight is loaded, and so are the memory
the length will take (refused where it exceeds the device's) and the output folder's writability.
The plan, the mp4 and its sidecar are written under temporary names and renamed together once the
video is complete (`semgen_cli.io.outputs.Commit`), so an interrupted run never pairs old and new files.

This module holds the settings (:class:`GenerateConfig`), their resolution against the runs
(:func:`resolve`) and the loop over prompts (:func:`generate`); the loaded models and the making
of one video are `semgen_cli.pipeline.Pipeline`, the memory estimates and stage timings
`semgen_cli.profiling`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semgen_cli import parallel
from semgen_cli.errors import ConfigError, InputError, MismatchError
from semgen_cli.io.outputs import holding, output_paths
from semgen_cli.pipeline import Pipeline, VideoOut, pick_device, plan_file_seconds
from semgen_cli.pipeline_file import default_pipeline
from semgen_cli.profiling import check_memory, estimate_cost, format_bytes
from semgen_cli.reporting import NULL, Reporter

if TYPE_CHECKING:
    from semgen_cli.runs import LatentRun, SemanticRun

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
MAX_PROMPT_CHARS = 8192
"""Longest prompt: it goes into the mp4's metadata on ffmpeg's command line, where one argument
holds at most 128 KiB."""
MAX_STEPS = 10_000
"""Most Euler steps of a stage (the paper samples with tens)."""
MAX_PROMPTS_FILE_BYTES = 16 << 20
"""Largest --prompts-file read (16 MiB)."""
SIGMA_FRACTION = 0.5
"""Default ``--semantic-noise``: this fraction of the latent run's training maximum σ."""


# ----------------------------------------------------------------------------- config


@dataclass
class GenerateConfig:
    """Settings of one `semgen generate` call; every field is checked before any model loads."""

    prompts: list[str]
    """One prompt per video (``--prompts-file`` gives several)."""
    out: str = "out.mp4"
    """mp4 to write; with several prompts, ``out-000.mp4``, ``out-001.mp4``, … beside it."""
    seconds: float | None = None
    """Duration; None: the reference's length with --semantic-from, else the semantic run's max_seconds."""
    latent_run: str | None = None
    """train-latent run (stage 1); None with semantic_run None: the bundled default pipeline."""
    semantic_run: str | None = None
    """train-semantic run (stage 2); not needed with --semantic-from."""
    seed: int = 0
    """Seed of all noise (every prompt of a batch uses it, so each is reproducible alone)."""
    semantic_steps: int = 30
    """Euler steps of stage 2."""
    latent_steps: int = 30
    """Euler steps of stage 1."""
    semantic_cfg: float = 5.0
    """CFG scale of stage 2: the text is the plan's only source, so it is guided strongly."""
    latent_cfg: float = 3.5
    """CFG scale of stage 1: the plan fixes the content, text guidance sharpens it. The unguided
    branch keeps the plan and drops the text, so this scale pushes the latents towards what the
    caption names (on the toy world: the shape; 3.5 beats 1, 2, 5, 7 and 10 there)."""
    semantic_noise: float | None = None
    """σ of the plan given to stage 1; None: SIGMA_FRACTION × the latent run's training maximum."""
    fps: float | None = None
    """Output frame rate; None: the rate the runs were trained at."""
    size: tuple[int, int] | None = None
    """(H, W); None: the training size. Must be divisible by the VAE stride × DiT patch."""
    save_semantics: bool = False
    """Write the plan as ``out.semantic.safetensors`` beside each mp4."""
    semantic_from: str | None = None
    """Reference video (or a saved ``.semantic.safetensors`` plan): skip stage 2 and use its plan."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:N, mps."""
    dtype: str = "auto"
    """DiT weights: auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16, float16."""
    decode_chunk: int = 4
    """Latent frames the VAE decodes per call (causal cache carried between calls)."""
    attention: str | None = None
    """Override stage 1's attention (full or swin); None: as trained. For baselines and benchmarks."""
    vae: str | None = None
    """Decode with this VAE spec instead of the runs' own; its encoder must be theirs (same
    `encoder_fingerprint`, so the same latents), e.g. a retrained or wider decoder."""
    parallel: str = "auto"
    """Under torchrun: auto, none, prompt, guidance, window or guidance+window (semgen_cli/parallel)."""
    attention_backend: str = "auto"
    """SDPA kernel of both DiTs (`semgen_cli.models.acceleration`): auto, flash, cudnn, efficient, math."""
    compile: bool = False
    """torch.compile each block of both DiTs (regional compilation)."""

    def __post_init__(self) -> None:
        from semgen_cli.models.acceleration import check_attention_backend

        check_attention_backend(self.attention_backend, None if self.device == "auto" else self.device)
        if isinstance(self.prompts, str):
            self.prompts = [self.prompts]
        self._check_prompts()
        self._check_sampling()
        self._check_video()
        self._check_machine()

    def _check_prompts(self) -> None:
        if not self.prompts:
            raise ConfigError("no prompt given: pass a prompt or --prompts-file with one prompt per line")
        for i, prompt in enumerate(self.prompts):
            which = "the prompt" if len(self.prompts) == 1 else f"prompt {i + 1}"
            if len(prompt) > MAX_PROMPT_CHARS:
                raise ConfigError(f"{which} has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS} (the text encoder reads a few hundred tokens)")
            if "\x00" in prompt:
                raise ConfigError(f"{which} holds a NUL character; give plain text")

    def _check_sampling(self) -> None:
        """--seconds, the steps, CFG scales and the plan's noise."""
        if self.seconds is not None:
            if not isinstance(self.seconds, (int, float)) or not math.isfinite(self.seconds) or self.seconds <= 0:
                raise ConfigError(f"--seconds must be a positive number of seconds, got {self.seconds:g}")
        for name, flag in (("semantic_steps", "--semantic-steps"), ("latent_steps", "--latent-steps")):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= MAX_STEPS:
                raise ConfigError(f"{flag} must be from 1 to {MAX_STEPS}, got {value}")
        for name, flag in (("semantic_cfg", "--semantic-cfg"), ("latent_cfg", "--latent-cfg")):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{flag} must be >= 0 (1 = no guidance), got {value}")
        if self.semantic_noise is not None and (not math.isfinite(self.semantic_noise) or self.semantic_noise < 0):
            raise ConfigError(f"--semantic-noise must be >= 0, got {self.semantic_noise}")

    def _check_video(self) -> None:
        """--fps, --size, --decode-chunk and --attention."""
        if self.fps is not None and (not math.isfinite(self.fps) or self.fps <= 0):
            raise ConfigError(f"--fps must be positive, got {self.fps:g}")
        if self.size is not None:
            self.size = (int(self.size[0]), int(self.size[1]))
            if min(self.size) <= 0:
                raise ConfigError(f"--size must be positive, got {self.size[0]}x{self.size[1]}")
        if self.decode_chunk < 1:
            raise ConfigError(f"--decode-chunk must be at least 1 latent frame, got {self.decode_chunk}")
        if self.attention not in (None, "full", "swin"):
            raise ConfigError(f"--attention must be full or swin, got {self.attention!r}")

    def _check_machine(self) -> None:
        """--device and --dtype, then the files: --out and --semantic-from."""
        base = self.device.split(":")[0]
        if base not in DEVICES or (":" in self.device and (base != "cuda" or not self.device.split(":")[1].isdigit())):
            raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if Path(self.out).suffix.lower() != ".mp4":
            raise ConfigError(f"--out {self.out}: semgen writes H.264 mp4; give a name ending in .mp4")
        if self.semantic_from is not None and not Path(self.semantic_from).is_file():
            raise InputError(f"--semantic-from {self.semantic_from}: no such file")


# ----------------------------------------------------------------------------- resolve (no weights)


@dataclass
class Resolved:
    """What `generate` will do, worked out from the flags and the runs' config.json alone."""

    latent_run: Path
    semantic_run: Path | None
    pipeline: str
    """'bundled default' or 'given runs'."""
    lat: LatentRun
    sem: SemanticRun | None
    seconds: float
    fps: float
    trained_fps: float
    size: tuple[int, int]
    frames: int
    """round(seconds · fps): frames the mp4 will hold."""
    latent_frames: int
    latent_shape: tuple[int, int, int, int]
    """(C, T, h, w) of stage 1."""
    semantic_fps: float
    semantic_size: tuple[int, int]
    semantic_tokens: int
    semantic_grid: tuple[int, int]
    channels: int
    sigma: float
    sigma_max: float
    max_seconds: float | None
    """Longest clip the semantic model was trained on."""
    plan_source: str
    """'stage 2', 'reference video', 'saved plan', or 'none' (a Base-CT run: no plan at all)."""
    components: dict
    warnings: list[str] = field(default_factory=list)
    stage1_tokens: int = 0
    """Tokens of one stage-1 forward pass (video + in-context plan): what full attention squares."""
    memory_bytes: int = 0
    """Estimated memory that grows with the length (both stages' tokens, activations, latents),
    on top of the loaded models and the VAE's fixed per-chunk decode memory."""
    tokens: tuple[int, int] = (0, 0)
    """Tokens stage 2 and stage 1 attend over (stage 2 with full attention: cost ∝ its square)."""

    def settings(self, cfg: GenerateConfig) -> dict[str, Any]:
        """The rows of the settings table (and the `settings` of the mp4 metadata)."""
        comps = self.components
        attention = cfg.attention or self.lat.dit["attention"]
        if attention == "swin":
            attention += f" (T_w={self.lat.dit['window']})"
        condition = self.lat.condition
        baseline = self.plan_source == "none"
        rows = {
            "pipeline": self.pipeline,
            "latent run": str(self.latent_run) + (" (Base-CT: no semantic condition)" if baseline else " (compressed-VAE condition, Fig. 9)" if condition == "vae" else ""),
            "semantic run": "— (text-to-video baseline)" if baseline else str(self.semantic_run) if self.semantic_run else "— (plan from --semantic-from)",
            "plan": self.plan_source + (f" {cfg.semantic_from}" if cfg.semantic_from else ""),
            "duration": f"{self.seconds:g} s = {self.frames} frames at {self.fps:g} fps",
            "size": f"{self.size[0]}x{self.size[1]}",
            "latents": "×".join(map(str, self.latent_shape)),
            "semantic tokens": "none" if baseline else f"{self.channels}×{self.semantic_tokens}×{self.semantic_grid[0]}×{self.semantic_grid[1]} at {self.semantic_fps:g} fps",
            "stage 2": "none" if baseline else "skipped" if self.plan_source != "stage 2" else f"{cfg.semantic_steps} steps, cfg {cfg.semantic_cfg:g}, full attention",
            "stage 1": f"{cfg.latent_steps} steps, cfg {cfg.latent_cfg:g}, {attention} attention"
                       + ("" if baseline else f", σ {self.sigma:g} (trained ≤ {self.sigma_max:g})"),
            "decode": f"{cfg.decode_chunk} latent frames per chunk, causal cache kept" + (f", VAE {cfg.vae} (not the runs' own)" if cfg.vae else ""),
            "seed": cfg.seed,
            "cost": f"estimated peak memory {format_bytes(self.memory_bytes)} for the length (beyond the models); "
                    f"{self.tokens[0]} tokens in stage 2 (full attention), {self.tokens[1]} in stage 1, per step",
            "device": f"{cfg.device}, {cfg.dtype}",
            # what the runs' data was extracted with; the summary after loading names what decoded
            "trained on": ", ".join(f"{role} {c.get('fingerprint')}" for role, c in comps.items()),
        }
        return rows


def resolve(cfg: GenerateConfig) -> Resolved:
    """Check the runs and the flags against each other from config.json files; load no weights."""
    latent_run, semantic_run, pipeline, lat, sem = _runs(cfg)
    warnings: list[str] = []
    fps, size = _rate_and_size(cfg, lat, warnings)
    plan_source, seconds, max_seconds, frames = _duration(cfg, lat, sem, fps, warnings)
    geometry, s_stride = lat.geometry, lat.geometry.spatial_stride
    pt = int(lat.dit["patch"][0])
    T = geometry.latent_frames(seconds, fps)
    T = -(-T // pt) * pt  # whole temporal patches; the extra frames are decoded and cut
    channels = int(lat.dit["semantic_dim"])
    Ts, (hs, ws) = 0, (0, 0)
    if channels:
        Ts = geometry.semantic_tokens(seconds)
        hs, ws = (int(v) for v in lat.semantic_grid[:2])
    sigma_max, sigma = _plan_noise(cfg, lat, channels, warnings)
    p = lat.producer
    r = Resolved(
        latent_run=latent_run, semantic_run=semantic_run, pipeline=pipeline, lat=lat, sem=sem, seconds=float(seconds),
        fps=fps, trained_fps=geometry.fps, size=(int(size[0]), int(size[1])), frames=frames, latent_frames=T,
        latent_shape=(int(lat.latent_shape[0]), T, size[0] // s_stride, size[1] // s_stride), semantic_fps=geometry.semantic_fps,
        semantic_size=tuple(int(v) for v in (p.get("semantic_size") or p["size"])), semantic_tokens=Ts, semantic_grid=(hs, ws),
        channels=channels, sigma=sigma, sigma_max=sigma_max, max_seconds=max_seconds, plan_source=plan_source,
        components=lat.components, warnings=warnings,
    )
    estimate_cost(r, cfg)
    return r


def _runs(cfg: GenerateConfig) -> tuple[Path, Path | None, str, LatentRun, SemanticRun | None]:
    """(latent run, semantic run, 'bundled default' or 'given runs', their records), the pair checked."""
    from semgen_cli.runs import LatentRun, SemanticRun, check_pair

    pipeline = "given runs"
    latent_run, semantic_run = cfg.latent_run, cfg.semantic_run
    if latent_run is None and semantic_run is None:
        latent_run, semantic_run = default_pipeline()
        pipeline = "bundled default"
    elif latent_run is None:
        raise ConfigError("--semantic-run given without --latent-run; pass the latent run it was trained on too")
    latent_run = Path(latent_run)
    lat = LatentRun.from_dir(latent_run, "--latent-run")
    condition = lat.condition
    if condition == "none":  # Base-CT / Base-CT-Swin: a text-to-video model, no plan
        _check_baseline_flags(cfg, latent_run, semantic_run)
    elif condition not in ("semantic", "vae") or not lat.compressor:
        raise MismatchError(f"--latent-run {latent_run}: trained with --condition {condition} and no compressor; retrain it with semgen train-latent")
    elif semantic_run is None and cfg.semantic_from is None:
        raise ConfigError("--latent-run given without --semantic-run; pass the semantic run too (or --semantic-from ref.mp4)")
    if cfg.semantic_from is not None:
        semantic_run = cfg.semantic_run  # not used: the plan comes from the reference
    sem = None
    if semantic_run is not None:
        semantic_run = Path(semantic_run)
        sem = SemanticRun.from_dir(semantic_run, "--semantic-run")
        check_pair(lat, sem)
    return latent_run, semantic_run, pipeline, lat, sem


def _rate_and_size(cfg: GenerateConfig, lat: LatentRun, warnings: list[str]) -> tuple[float, tuple[int, int]]:
    """The output's frame rate and size, checked against the strides; a warning where they are not the training ones."""
    geometry = lat.geometry
    s_stride, (_, ph, pw) = geometry.spatial_stride, lat.dit["patch"]
    trained_fps = geometry.fps
    fps = float(cfg.fps or trained_fps)
    if abs(fps - trained_fps) > 1e-9:
        warnings.append(f"--fps {fps:g}: the latent model was trained at {trained_fps:g} fps; motion will play at a different speed")
    trained_size = tuple(int(v) for v in lat.producer["size"])
    size = cfg.size or trained_size
    if size[0] % (s_stride * ph) or size[1] % (s_stride * pw):
        raise ConfigError(
            f"--size {size[0]}x{size[1]}: height and width must be multiples of {s_stride * ph}x{s_stride * pw} "
            f"(VAE stride {s_stride} × patch {ph}x{pw}), e.g. {trained_size[0]}x{trained_size[1]}"
        )
    if tuple(size) != trained_size:
        warnings.append(f"--size {size[0]}x{size[1]}: the latent model was trained at {trained_size[0]}x{trained_size[1]}")
    return fps, size


def _duration(cfg: GenerateConfig, lat: LatentRun, sem: SemanticRun | None, fps: float, warnings: list[str]) -> tuple[str, float, float | None, int]:
    """(plan source, seconds, the semantic run's training length, frames): --seconds, else the
    reference's length, else the semantic run's; a warning where stage 2 would extrapolate."""
    from semgen_cli.io.video import probe

    geometry = lat.geometry
    plan_source = "none" if lat.condition == "none" else "stage 2"
    max_seconds = float(sem.max_seconds) if sem is not None else None
    seconds = cfg.seconds
    if cfg.semantic_from is not None:
        plan_source = "saved plan" if cfg.semantic_from.endswith(".safetensors") else "reference video"
        ref_seconds = (plan_file_seconds(cfg.semantic_from, geometry.semantic_fps, geometry.temporal_patch) if plan_source == "saved plan"
                       else probe(cfg.semantic_from).duration)
        if seconds is None:
            seconds = ref_seconds
        elif seconds > ref_seconds + 1e-6:
            raise ConfigError(f"--seconds {seconds:g}: --semantic-from {cfg.semantic_from} lasts only {ref_seconds:.3g} s; ask for at most that")
    elif seconds is None:
        seconds = max_seconds
    frames = round(seconds * fps)
    if frames < 1:
        raise ConfigError(f"--seconds {seconds:g} is less than one frame at {fps:g} fps; ask for at least {1 / fps:.3g} s")
    # Training clips are cut to whole latent frames (1 + 4k video frames), so a 60 s clip trains as
    # 59.6 s: asking for up to one latent frame more is not extrapolation.
    if plan_source == "stage 2" and max_seconds is not None and seconds > max_seconds + geometry.temporal_stride / geometry.fps + 1e-6:
        warnings.append(
            f"--seconds {seconds:g} is longer than the {max_seconds:g} s the semantic model was trained on; "
            "it extrapolates, expect the plan to degrade"
        )
    return plan_source, seconds, max_seconds, frames


def _plan_noise(cfg: GenerateConfig, lat: LatentRun, channels: int, warnings: list[str]) -> tuple[float, float]:
    """(σ max the latent run was trained with, σ of the plan given to stage 1)."""
    sigma_max = lat.semantic_noise if channels else 0.0
    sigma = SIGMA_FRACTION * sigma_max if cfg.semantic_noise is None else float(cfg.semantic_noise)
    if sigma > sigma_max + 1e-9:
        warnings.append(f"--semantic-noise {sigma:g} is above the {sigma_max:g} the latent model was trained with")
    return sigma_max, sigma


def _check_baseline_flags(cfg: GenerateConfig, latent_run: Path, semantic_run) -> None:
    """A Base-CT latent run (--condition none) is a text-to-video model: it takes no plan."""
    what = f"--latent-run {latent_run} is a text-to-video baseline (--condition none) that takes no semantic plan"
    if semantic_run is not None:
        raise ConfigError(f"--semantic-run: {what}; drop --semantic-run")
    if cfg.semantic_from is not None:
        raise ConfigError(f"--semantic-from: {what}; drop --semantic-from")
    if cfg.save_semantics:
        raise ConfigError(f"--save-semantics: {what}; drop --save-semantics")
    if cfg.semantic_noise is not None:
        raise ConfigError(f"--semantic-noise: {what}; drop --semantic-noise")


# ----------------------------------------------------------------------------- the loop


@dataclass
class GenerateResult:
    videos: list[VideoOut]
    load_seconds: float
    load_memory: dict[str, int]
    memory_kind: str
    pipeline: str
    latent_run: Path
    semantic_run: Path | None
    device: str
    dtype: str
    warnings: list[str]
    components: dict[str, str]
    """role -> fingerprint of what was loaded (the VAE that decoded may have another decoder than the runs')."""

    @property
    def drift_command(self) -> str:
        import shlex

        return "semgen drift " + " ".join(shlex.quote(str(v.path)) for v in self.videos)

    @property
    def peak_memory(self) -> int:
        peaks = [self.load_memory["peak"]] + [m["peak"] for v in self.videos for m in v.memory_per_stage.values()]
        return max(peaks)

    @classmethod
    def of(cls, pipe: Pipeline, videos: list[VideoOut]) -> "GenerateResult":
        r = pipe.r
        return cls(
            videos=videos, load_seconds=pipe.load_seconds, load_memory=pipe.load_memory, memory_kind=pipe.memory_kind,
            pipeline=r.pipeline, latent_run=r.latent_run, semantic_run=r.semantic_run if r.plan_source == "stage 2" else None,
            device=str(pipe.device), dtype=str(pipe.dtype).removeprefix("torch."), warnings=r.warnings, components=pipe.loaded,
        )


def load(cfg: GenerateConfig, reporter: Reporter = NULL, resolved: Resolved | None = None) -> Pipeline:
    """The pipeline of `cfg`, loaded once the resolution's warnings are given and the memory the
    length takes is known to fit the device; under torchrun on every rank, spread as the
    parallel plan says (`semgen_cli.parallel`)."""
    r = resolved or resolve(cfg)
    for w in r.warnings:
        reporter.warn(w)
    device, _ = pick_device(cfg.device, cfg.dtype)
    check_memory(r, device)
    par = parallel.plan_for(cfg, r)  # several ranks under torchrun: who makes which prompt, and how
    return parallel.load(par, lambda: Pipeline(cfg, r, reporter, par))


def generate_each(pipe: Pipeline, jobs: list[tuple[str, int, str | None]], paths: list[Path]) -> list[VideoOut]:
    """`pipe.generate_one(prompt, seed, plan)` for every job into its path (under torchrun, the jobs
    this rank takes); the videos of every rank, in the order of the paths."""
    videos = []
    for i, ((prompt, seed, plan), path) in enumerate(zip(jobs, paths, strict=True)):
        if not pipe.par.takes(i):
            continue
        video = pipe.generate_one(prompt, seed, plan, out=path, tag=f"[{i + 1}/{len(paths)}] " if len(paths) > 1 else "")
        if video is not None:  # None: a rank that helped but does not write
            videos.append(video)
    return sorted(parallel.gather_objects(pipe.par, videos), key=lambda v: str(v.path))  # prompt-parallel: every rank's videos


def generate(cfg: GenerateConfig, reporter: Reporter = NULL, resolved: Resolved | None = None) -> GenerateResult:
    """Write one mp4 (and its sidecar JSON) per prompt, all with `cfg.seed`; see the module
    docstring. Every output file's write lock is held throughout: a second `generate` to the same
    --out is refused, naming this one, instead of sharing its files."""
    paths = output_paths(cfg.out, len(cfg.prompts))
    with holding(paths):
        pipe = load(cfg, reporter, resolved)
        videos = generate_each(pipe, [(prompt, cfg.seed, None) for prompt in cfg.prompts], paths)
    return GenerateResult.of(pipe, videos)


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts of a --prompts-file: one per line; blank lines and lines starting with # are skipped."""
    from semgen_cli.io.small_files import read_small_text

    path = Path(path)
    text = read_small_text(path, "--prompts-file", MAX_PROMPTS_FILE_BYTES, "a text file with one prompt per line")
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise InputError(f"--prompts-file {path}: no prompts (one per line)")
    return prompts


__all__ = ["GenerateConfig", "GenerateResult", "Resolved", "default_pipeline", "generate", "generate_each", "load", "read_prompts", "resolve"]

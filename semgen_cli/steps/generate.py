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
video is complete (:class:`_Commit`), so an interrupted run never pairs old and new files.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from semgen_cli import parallel
from semgen_cli.errors import ConfigError, InputError, MismatchError, out_of_memory
from semgen_cli.pipeline_file import default_pipeline
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
    attention_backend: str = "auto"
    """SDPA kernel of both DiTs (`semgen_cli.models.acceleration`): auto, flash, cudnn, efficient, math."""
    compile: bool = False
    """torch.compile each block of both DiTs (regional compilation)."""
    parallel: str = "auto"
    """Under torchrun: auto, none, prompt, guidance, window or guidance+window (semgen_cli/parallel)."""

    def __post_init__(self) -> None:
        from semgen_cli.models.acceleration import check_attention_backend

        check_attention_backend(self.attention_backend, None if self.device == "auto" else self.device)
        if isinstance(self.prompts, str):
            self.prompts = [self.prompts]
        if not self.prompts:
            raise ConfigError("no prompt given: pass a prompt or --prompts-file with one prompt per line")
        for i, prompt in enumerate(self.prompts):
            which = "the prompt" if len(self.prompts) == 1 else f"prompt {i + 1}"
            if len(prompt) > MAX_PROMPT_CHARS:
                raise ConfigError(f"{which} has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS} (the text encoder reads a few hundred tokens)")
            if "\x00" in prompt:
                raise ConfigError(f"{which} holds a NUL character; give plain text")
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
        base = self.device.split(":")[0]
        if base not in DEVICES or (":" in self.device and (base != "cuda" or not self.device.split(":")[1].isdigit())):
            raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if Path(self.out).suffix.lower() != ".mp4":
            raise ConfigError(f"--out {self.out}: semgen writes H.264 mp4; give a name ending in .mp4")
        if self.semantic_from is not None and not Path(self.semantic_from).is_file():
            raise InputError(f"--semantic-from {self.semantic_from}: no such file")


def output_paths(out: str | os.PathLike, count: int) -> list[Path]:
    """``out.mp4`` for one video; ``out-000.mp4``, ``out-001.mp4``, … for several."""
    out = Path(out)
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i:03d}{out.suffix}") for i in range(count)]


def sidecar_path(mp4: Path) -> Path:
    return mp4.with_suffix(".json")


def semantics_path(mp4: Path) -> Path:
    return mp4.with_suffix(".semantic.safetensors")


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
            "cost": f"estimated peak memory {_gib(self.memory_bytes)} for the length (beyond the models); "
                    f"{self.tokens[0]} tokens in stage 2 (full attention), {self.tokens[1]} in stage 1, per step",
            "device": f"{cfg.device}, {cfg.dtype}",
            # what the runs' data was extracted with; the summary after loading names what decoded
            "trained on": ", ".join(f"{role} {c.get('fingerprint')}" for role, c in comps.items()),
        }
        return rows


def resolve(cfg: GenerateConfig) -> Resolved:
    """Check the runs and the flags against each other from config.json files; load no weights."""
    from semgen_cli.runs import LatentRun, SemanticRun, check_pair

    # 1. which runs
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

    # 2. frame rates and size
    comps, p, geometry = lat.components, lat.producer, lat.geometry
    t_stride, s_stride = geometry.temporal_stride, geometry.spatial_stride
    pt, ph, pw = lat.dit["patch"]
    trained_fps = geometry.fps
    fps = float(cfg.fps or trained_fps)
    warnings: list[str] = []
    if abs(fps - trained_fps) > 1e-9:
        warnings.append(f"--fps {fps:g}: the latent model was trained at {trained_fps:g} fps; motion will play at a different speed")
    trained_size = tuple(int(v) for v in p["size"])
    size = cfg.size or trained_size
    if size[0] % (s_stride * ph) or size[1] % (s_stride * pw):
        raise ConfigError(
            f"--size {size[0]}x{size[1]}: height and width must be multiples of {s_stride * ph}x{s_stride * pw} "
            f"(VAE stride {s_stride} × patch {ph}x{pw}), e.g. {trained_size[0]}x{trained_size[1]}"
        )
    if tuple(size) != trained_size:
        warnings.append(f"--size {size[0]}x{size[1]}: the latent model was trained at {trained_size[0]}x{trained_size[1]}")
    sfps = geometry.semantic_fps
    ssize = tuple(int(v) for v in (p.get("semantic_size") or p["size"]))

    # 3. duration
    plan_source = "none" if condition == "none" else "stage 2"
    max_seconds = float(sem.max_seconds) if sem is not None else None
    seconds = cfg.seconds
    if cfg.semantic_from is not None:
        plan_source = "saved plan" if cfg.semantic_from.endswith(".safetensors") else "reference video"
        ref_seconds = _plan_seconds(cfg.semantic_from, sfps, geometry.temporal_patch) if plan_source == "saved plan" else _probe_seconds(cfg.semantic_from)
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
    if plan_source == "stage 2" and max_seconds is not None and seconds > max_seconds + t_stride / trained_fps + 1e-6:
        warnings.append(
            f"--seconds {seconds:g} is longer than the {max_seconds:g} s the semantic model was trained on; "
            "it extrapolates, expect the plan to degrade"
        )
    T = geometry.latent_frames(seconds, fps)
    T = -(-T // pt) * pt  # whole temporal patches; the extra frames are decoded and cut
    C = int(lat.latent_shape[0])
    channels = int(lat.dit["semantic_dim"])
    Ts, (hs, ws) = 0, (0, 0)
    if channels:
        Ts = geometry.semantic_tokens(seconds)
        hs, ws = (int(v) for v in lat.semantic_grid[:2])

    # 4. the plan's noise level
    sigma_max = lat.semantic_noise if channels else 0.0
    sigma = SIGMA_FRACTION * sigma_max if cfg.semantic_noise is None else float(cfg.semantic_noise)
    if sigma > sigma_max + 1e-9:
        warnings.append(f"--semantic-noise {sigma:g} is above the {sigma_max:g} the latent model was trained with")

    # 5. what the length costs (memory before any of it is allocated); full attention grows with
    #    the square of the length: say so
    n1 = (T // pt) * (size[0] // s_stride // ph) * (size[1] // s_stride // pw) + Ts * hs * ws  # latent + in-context semantic tokens
    n2 = 0
    memory = _length_memory(C * T * (size[0] // s_stride) * (size[1] // s_stride), n1, lat.dit, cfg.latent_cfg != 1)
    if plan_source == "stage 2":
        sp = sem.dit["patch"]
        n2 = (Ts // int(sp[0])) * (hs // int(sp[1])) * (ws // int(sp[2]))
        memory = max(memory, _length_memory(channels * Ts * hs * ws, n2, sem.dit, cfg.semantic_cfg != 1))
    if max_seconds is not None and seconds > 10 * max_seconds:
        warnings.append(
            f"--seconds {seconds:g} is {seconds / max_seconds:.0f}× the trained length: stage 2 attends over {n2} tokens at once "
            f"(its time grows with the square of the length), estimated peak memory {_gib(memory)} beyond the models"
        )
    if (cfg.attention or lat.dit["attention"]) == "full":
        warnings += _full_attention_cost(lat, n1)

    return Resolved(
        memory_bytes=memory, tokens=(n2, n1),
        latent_run=latent_run, semantic_run=semantic_run, pipeline=pipeline, lat=lat, sem=sem, seconds=float(seconds),
        fps=fps, trained_fps=trained_fps, size=(int(size[0]), int(size[1])), frames=frames, latent_frames=T,
        latent_shape=(C, T, size[0] // s_stride, size[1] // s_stride), semantic_fps=sfps, semantic_size=ssize,
        semantic_tokens=Ts, semantic_grid=(hs, ws), channels=channels, sigma=sigma, sigma_max=sigma_max,
        max_seconds=max_seconds, plan_source=plan_source, components=comps, warnings=warnings, stage1_tokens=n1,
    )


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


def _full_attention_cost(lat: LatentRun, tokens: int) -> list[str]:
    """A warning when full attention runs over more tokens than one training window held: the
    attention of every layer costs tokens² (time; memory too where SDPA has no fused kernel)."""
    _, h, w = (int(v) for v in lat.latent_shape)
    pt, ph, pw = (int(v) for v in lat.dit["patch"])
    window = lat.window or {}
    trained = int(window.get("latents", 1)) // pt * (h // ph) * (w // pw)
    trained += int(window.get("semantic_tokens", 0)) * math.prod(int(v) for v in (lat.semantic_grid or [0, 0])[:2])
    if tokens <= trained:
        return []
    return [f"full attention over {tokens} tokens per layer, {(tokens / trained) ** 2:.3g}× the attention cost of the "
            f"{trained} tokens of a {float(window.get('seconds', 0)):g} s training window (it grows with the square of the length; "
            "swin attention grows linearly)"]


ACTIVATION_FACTOR = 2.5
"""Peak memory per counted byte of one DiT block's tensors, chosen so that the estimate is at or
above what the bundled toy pipeline grew by on CPU (float32): 20 s, stage 1 41 MiB estimated /
39 measured, stage 2 17 / 17; 120 s, stage 1 244 / 212, stage 2 105 / 51."""


def _length_memory(elements: int, tokens: int, dit: dict, cfg: bool) -> int:
    """Bytes one sampling stage holds that grow with the length: the latents of the Euler loop
    (state, noise, a CFG batch and its velocities: 8 copies) and one block's activations for the
    CFG batch (residual, q, k, v, attention out and norms: 6·dim; feed-forward: 2·ffn_dim), as
    float32. Attention runs through a fused kernel (no token × token matrix)."""
    batch = 2 if cfg else 1
    block = batch * tokens * (6 * int(dit["dim"]) + 2 * int(dit["ffn_dim"]))
    return int(4 * (8 * elements + ACTIVATION_FACTOR * block))


def _gib(nbytes: int) -> str:
    if nbytes >= 2**40:
        return f"{nbytes / 2**40:.4g} TiB"
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**28 else f"{nbytes / 2**20:.0f} MiB"


def available_memory(device) -> tuple[int, str]:
    """(bytes, what) a generation on `device` may use: the GPU's total memory, or the memory
    Linux reports available (MemAvailable) on the CPU; (0, "") where it cannot be told."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"{device} total"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    return 0, ""


def check_memory(r: "Resolved", device) -> None:
    """Refuse, before any model loads, a length whose estimated memory exceeds the device's."""
    have, what = available_memory(device)
    if have and r.memory_bytes > have:
        raise ConfigError(
            f"--seconds {r.seconds:g} at {r.fps:g} fps and {r.size[0]}x{r.size[1]}: needs an estimated {_gib(r.memory_bytes)} of memory beyond the models, more than the "
            f"{_gib(have)} of {what}; ask for fewer seconds"
        )


def _probe_seconds(path: str) -> float:
    from semgen_cli.io.video import probe

    return probe(path).duration


def _plan_seconds(path: str, sfps: float, temporal_patch: int) -> float:
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            shape = f.get_slice("semantic").get_shape()
    except Exception as err:
        raise InputError(f"--semantic-from {path}: not a plan written by --save-semantics ({str(err).splitlines()[0][:120]})") from None
    if "seconds" in meta:
        return float(meta["seconds"])
    return shape[0] * temporal_patch / sfps


# ----------------------------------------------------------------------------- memory and time


class MemoryMeter:
    """Peak memory of a stage. CUDA: ``torch.cuda.max_memory_allocated`` after a reset. CPU: the
    process's peak resident set (``VmHWM``), reset at each stage start through
    ``/proc/self/clear_refs`` (after ``malloc_trim``) where Linux allows it, else ``ru_maxrss``
    (the peak since the process started)."""

    def __init__(self, device) -> None:
        import torch

        self.cuda = torch.device(device).type == "cuda"
        self.kind = "cuda max_memory_allocated" if self.cuda else "peak RSS (VmHWM)"
        self.base = 0

    def start(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        _malloc_trim()  # hand freed heap back to the OS, so what this stage allocates shows as RSS growth
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.kind = "peak RSS since start (ru_maxrss)"
        self.base = _status_kb("VmRSS") * 1024

    def peak(self) -> dict[str, int]:
        """{"peak": bytes, "above_start": bytes} since `start`."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _status_kb("VmHWM") * 1024 or _ru_maxrss()
        return {"peak": int(peak), "above_start": int(max(0, peak - self.base))}


def _malloc_trim() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _status_kb(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _ru_maxrss() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


class _Stages:
    """Wall time and peak memory per named stage."""

    def __init__(self, device) -> None:
        self.meter = MemoryMeter(device)
        self.seconds: dict[str, float] = {}
        self.memory: dict[str, dict[str, int]] = {}
        self._name, self._t0 = None, 0.0

    def begin(self, name: str) -> None:
        self.meter.start()
        self._name, self._t0 = name, time.perf_counter()

    def end(self) -> None:
        if self.meter.cuda:
            import torch

            torch.cuda.synchronize()
        self.seconds[self._name] = time.perf_counter() - self._t0
        self.memory[self._name] = self.meter.peak()


# ----------------------------------------------------------------------------- the pipeline


@dataclass
class VideoOut:
    path: Path
    sidecar: Path
    semantics: Path | None
    prompt: str
    seconds: float
    frames: int
    fps: float
    seed: int
    seconds_per_stage: dict[str, float]
    memory_per_stage: dict[str, dict[str, int]]


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


class Pipeline:
    """The loaded models of one latent run + semantic run, ready to turn prompts into latents."""

    def __init__(self, cfg: GenerateConfig, r: Resolved, reporter: Reporter = NULL) -> None:
        from semgen_cli.models.dit import DiT
        from semgen_cli.runs import split_state, tensors_fingerprint

        self.cfg, self.r = cfg, r
        self.device, self.dtype = pick_device(cfg.device, cfg.dtype)
        comps = r.components

        # 1. stage 1 weights; the semantic run must have been trained on this compressor
        lat_state = r.lat.sampling_weights("--latent-run")  # a LoRA run's adapters merged into its checked base
        comp_state = split_state(lat_state, "compressor")
        fp = tensors_fingerprint(comp_state, "compressor:")
        if r.sem is not None and r.plan_source == "stage 2" and r.sem.compressor_fingerprint != fp:
            raise MismatchError(
                f"--semantic-run {r.semantic_run} was trained on compressor {r.sem.compressor_fingerprint} "
                f"(latent run {r.sem.latent_run.get('path')}), but --latent-run {r.latent_run} holds {fp}; "
                "pass the latent run the semantic run was trained on"
            )
        self.compressor_fingerprint = fp if comp_state else None  # None: a Base-CT run has no compressor
        override = {"attention": cfg.attention} if cfg.attention is not None else {}
        self.latent_dit = _build(DiT, r.lat.dit_config(**override), split_state(lat_state, "dit"), self.device, self.dtype, "--latent-run", r.latent_run)
        self.compressor = None
        if cfg.semantic_from is not None:
            self.compressor = r.lat.load_compressor(lat_state)[0].to(self.device)
        del lat_state, comp_state

        # 2. stage 2
        self.semantic_dit = None
        if r.plan_source == "stage 2":
            sem_state = r.sem.sampling_weights("--semantic-run")
            self.semantic_dit = _build(DiT, r.sem.dit_config(), split_state(sem_state, "dit"), self.device, self.dtype, "--semantic-run", r.semantic_run)
            del sem_state

        from semgen_cli.models.acceleration import compile_blocks

        for dit in (self.latent_dit, self.semantic_dit):
            compile_blocks(dit, cfg.compile and dit is not None)

        # 3. frozen components, checked against the fingerprints the runs recorded
        from semgen_cli.components import load_semantic_encoder, load_text_encoder, load_vae

        text = comps["text"]
        self.text_encoder = _checked(load_text_encoder(text["spec"], device=self.device, max_length=text.get("max_length")), text, "text")
        self.vae = _checked(load_vae(cfg.vae or comps["vae"]["spec"], device=self.device), comps["vae"], "vae")
        self.semantic_encoder = None
        if r.plan_source == "reference video" and r.lat.condition == "semantic":
            s = comps["semantic"]
            extra = {k: s[k] for k in ("min_pixels", "max_pixels") if k in s}
            self.semantic_encoder = _checked(load_semantic_encoder(s["spec"], device=self.device, fps=r.semantic_fps, **extra), s, "semantic")
        self.latent_dit_config = self.latent_dit.config

    # -- conditions ---------------------------------------------------------------------------------
    def text(self, prompt: str):
        """(cond, uncond) text conditions: real tokens with an all-True mask; zeros for uncond."""
        import torch

        emb, mask = self.text_encoder.encode([prompt])  # (1, L, D), (1, L)
        n = max(1, int(mask[0].sum()))
        emb = emb[:, :n].to(self.device)  # (1, n, D): padding is not part of the condition
        full = torch.ones(1, n, dtype=torch.bool, device=self.device)
        return {"text": emb, "text_mask": full}, {"text": torch.zeros_like(emb), "text_mask": full}

    def plan_from_stage2(self, cond: dict, uncond: dict, generator, progress=None):
        """Stage 2: normalised compressed tokens (1, Ts, hs, ws, c) for the whole duration."""
        import torch

        from semgen_cli.flow import euler_sample

        r = self.r
        noise = torch.randn((1, r.channels, r.semantic_tokens, *r.semantic_grid), generator=generator)  # (1, c, Ts, hs, ws)
        cond, uncond = run_text(cond, uncond, r.sem.text)
        z = euler_sample(self.semantic_dit, noise.to(self.device), self.cfg.semantic_steps, shift=float(r.sem.shift),
                         cfg_scale=self.cfg.semantic_cfg, cond=cond, uncond=uncond, progress=progress)
        return z.float().permute(0, 2, 3, 4, 1).contiguous()  # (1, Ts, hs, ws, c)

    def plan_from_reference(self, path: str):
        """Paper Fig. 4: the reference's own plan, read at the runs' semantic fps and size (a
        compressed-VAE run: its VAE latents at the training fps and size, on the semantic grid)."""
        from semgen_cli.io.video import read_video

        r = self.r
        if r.lat.condition == "vae":
            feats = self._vae_tokens(path).to(self.device)  # (Ts, hs, ws, C·r·a·b)
        else:
            frames = read_video(path, fps=r.semantic_fps, size=r.semantic_size, max_seconds=r.seconds)  # (Fs, H, W, 3)
            feats = self.semantic_encoder.encode(frames).to(self.device)  # (Ts', hs, ws, d)
        if tuple(feats.shape[1:3]) != r.semantic_grid:
            raise MismatchError(f"--semantic-from {path}: encodes to a {tuple(feats.shape[1:3])} grid, the runs use {r.semantic_grid}")
        if feats.shape[0] < r.semantic_tokens:
            raise ConfigError(f"--semantic-from {path}: gives {feats.shape[0]} semantic tokens, {r.seconds:g} s needs {r.semantic_tokens}; ask for fewer --seconds")
        z, _, _ = self.compressor(feats[: r.semantic_tokens].float())  # eval mode: the posterior mean
        return self.compressor.normalize(z)[None]  # (1, Ts, hs, ws, c)

    def _vae_tokens(self, path: str):
        """The VAE tokens (Ts, hs, ws, d) of a reference video, as `fit-compressor --features vae` made them."""
        from semgen_cli.io.video import read_video
        from semgen_cli.tokens import VaeLayout

        r = self.r
        layout = VaeLayout.from_dict(r.lat.vae_layout)
        size = tuple(int(v) for v in r.lat.producer["size"])
        span = r.lat.geometry.video_frames(math.ceil(r.semantic_tokens * layout.latents_per_token) + 1)  # frames the tokens read
        frames = read_video(path, fps=r.trained_fps, size=size, max_seconds=span / r.trained_fps)  # (F, H, W, 3)
        frames = frames[: self.vae.valid_frames(len(frames))]
        return layout.tokens(self.vae.encode(frames), r.semantic_tokens)  # (Ts, hs, ws, d)

    def plan_from_file(self, path: str):
        """A plan written by --save-semantics (it must come from this latent run's compressor)."""
        from safetensors import safe_open

        r = self.r
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            plan = f.get_tensor("semantic").float()  # (Ts, hs, ws, c)
        if meta.get("compressor_fingerprint") not in (None, self.compressor_fingerprint):
            raise MismatchError(f"--semantic-from {path}: made with compressor {meta['compressor_fingerprint']}, --latent-run {r.latent_run} holds {self.compressor_fingerprint}")
        if tuple(plan.shape[1:]) != (*r.semantic_grid, r.channels) or plan.shape[0] < r.semantic_tokens:
            raise MismatchError(f"--semantic-from {path}: plan of shape {tuple(plan.shape)}, need ≥ ({r.semantic_tokens}, {r.semantic_grid[0]}, {r.semantic_grid[1]}, {r.channels})")
        return plan[None, : r.semantic_tokens].to(self.device)

    def latents(self, plan, cond: dict, uncond: dict, noise, plan_eps, progress=None):
        """Stage 1: VAE latents (C, T, h, w) for the whole duration, conditioned on the plan
        (a Base-CT run: `plan` None, on the text alone)."""
        import torch

        from semgen_cli.flow import euler_sample

        r = self.r
        sem_cond = {}
        if plan is not None:
            times = r.lat.geometry.semantic_times(r.semantic_tokens, fps=r.fps)[None]  # (1, Ts), at the output's frame rate
            sem_cond = {
                "semantic": plan + r.sigma * plan_eps.to(self.device),  # the RAE noise the model was trained under, at fixed σ
                "semantic_sigma": torch.full((1,), r.sigma, device=self.device),
                "semantic_times": times.to(self.device),
            }
        cond, uncond = run_text(cond, uncond, r.lat.text)
        z = euler_sample(self.latent_dit, noise.to(self.device), self.cfg.latent_steps, shift=float(r.lat.shift),
                         cfg_scale=self.cfg.latent_cfg, cond={**cond, **sem_cond}, uncond=uncond, progress=progress)
        return z[0].float()  # (C, T, h, w)


def run_text(cond: dict, uncond: dict, text: dict) -> tuple[dict, dict]:
    """The text conditions the way a run whose `text` record is `text` was trained on them: as
    they are (real tokens, all-True mask), or for Wan's padding the real tokens zero-padded to the
    run's length (1, L, D) with no mask, and zeros of that shape unconditionally (diffusers'
    WanPipeline feeds UMT5 embeddings so)."""
    if text.get("padding") != "wan":
        return cond, uncond
    emb = cond["text"]  # (1, n, D), the caption's real tokens
    padded = emb.new_zeros(emb.shape[0], int(text["length"]), emb.shape[2])  # (1, L, D)
    padded[:, : emb.shape[1]] = emb[:, : padded.shape[1]]
    rest = {k: v for k, v in cond.items() if k not in ("text", "text_mask")}
    return {**rest, "text": padded}, {"text": padded.new_zeros(padded.shape)}


def pick_device(device: str, dtype: str):
    """(torch.device, torch.dtype) from the flags; ConfigError if the device is absent."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available here; use --device cpu")
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    if dtype == "float16" and dev.type == "cpu":
        raise ConfigError("--dtype float16 needs a GPU; use float32 or bfloat16 on the CPU")
    return dev, getattr(torch, dtype)


def initial_noise(r: Resolved, seed: int):
    """The draws a video starts from, in this order from one CPU generator seeded with `seed`:
    stage 1's noise (1, C, T, h, w), then the σ-noise of the plan (1, Ts, hs, ws, c); stage 2 goes
    on drawing from the returned generator. Returns (generator, noise, plan_eps). Shared by every
    plan source, so a seed gives the same stage-1 noise whether the plan is sampled or read."""
    import torch

    g = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn((1, *r.latent_shape), generator=g)
    plan_eps = torch.randn((1, r.semantic_tokens, *r.semantic_grid, r.channels), generator=g) if r.channels else None
    return g, noise, plan_eps


def _build(cls, config, state: dict, device, dtype, flag: str, run: Path):
    model = cls(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise MismatchError(f"{flag} {run}: checkpoint does not fit its config.json ({str(err).splitlines()[0][:160]})") from None
    return model.eval().requires_grad_(False).to(device, dtype)


def _checked(component, recorded: dict, role: str):
    """`component` if it is the one the runs recorded; a VAE may also differ in its decoder alone
    (same `encoder_fingerprint`), since the runs only ever saw its latents."""
    enc = recorded.get("encoder_fingerprint")
    same_latents = role == "vae" and enc is not None and enc == getattr(component, "encoder_fingerprint", None)
    if recorded.get("fingerprint") and component.fingerprint != recorded["fingerprint"] and not same_latents:
        if role == "vae" and component.spec != recorded.get("spec"):
            raise MismatchError(
                f"--vae {component.spec} has encoder {component.encoder_fingerprint}, the runs' latents came from "
                f"{enc or recorded['fingerprint'] + ' (no encoder fingerprint recorded)'}: only a VAE with the runs' encoder can decode them"
            )
        raise MismatchError(
            f"{role} encoder {recorded.get('spec')!r} now loads as {component.fingerprint}, "
            f"the runs were trained with {recorded['fingerprint']}; point the spec at the same weights"
        )
    return component


def decoded_frames(vae, latents, frames: int, chunk_latent_frames: int) -> Iterator:
    """uint8 frames (f, H, W, 3), ``chunk_latent_frames`` latent frames per VAE call, the causal
    cache carried between calls; cut after ``frames`` frames in total (the rest is never decoded)."""
    left = frames
    for part in vae.iter_decode(latents, chunk_latent_frames=chunk_latent_frames):
        part = part[:left]
        left -= len(part)
        if len(part):
            yield part
        if left <= 0:
            return


def generate(cfg: GenerateConfig, reporter: Reporter = NULL, resolved: Resolved | None = None,
             references: list[str] | None = None, seeds: list[int] | None = None) -> GenerateResult:
    """`_generate` holding the write lock of every output file: a second `generate` to the same
    --out is refused, naming this one, instead of sharing its files."""
    from contextlib import ExitStack

    from semgen_cli.io.lock import hold
    from semgen_cli.models.acceleration import attention_backend

    paths = output_paths(cfg.out, len(cfg.prompts))
    check_writable(paths)  # an unwritable place is named as such, not as a lock that cannot be taken
    with ExitStack() as stack:
        for path in paths:
            stack.enter_context(hold(path, "output file", folder=False))
        stack.enter_context(attention_backend(cfg.attention_backend))
        return _generate(cfg, reporter, resolved, references, seeds)


def _require_finite(t, what: str) -> None:
    """A NaN or inf in a plan or latents would decode to a black video with exit 0: refuse it."""
    import torch

    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{what} holds NaN or inf values; the runs' weights or the plan are broken (check them with `semgen inspect RUN --verify`)")


def _generate(cfg: GenerateConfig, reporter: Reporter = NULL, resolved: Resolved | None = None,
              references: list[str] | None = None, seeds: list[int] | None = None) -> GenerateResult:
    """Write one mp4 (and its sidecar JSON) per prompt; see the module docstring.

    `references` (with a reference-video `cfg.semantic_from`): one reference video per prompt,
    read instead of `cfg.semantic_from`, so that one loaded pipeline serves every prompt.
    `seeds`: one seed per prompt instead of `cfg.seed` for all (independent noise per prompt, as
    an evaluation wants)."""
    import torch

    from semgen_cli import __version__
    from semgen_cli.io.shards import write_json_atomic
    from semgen_cli.io.video import VideoWriter

    r = resolved or resolve(cfg)
    if references is not None and (r.plan_source != "reference video" or len(references) != len(cfg.prompts)):
        raise ConfigError(f"references: one reference video per prompt ({len(cfg.prompts)}) and a reference-video semantic_from needed, got {len(references)}")
    if seeds is not None and len(seeds) != len(cfg.prompts):
        raise ConfigError(f"seeds: one seed per prompt ({len(cfg.prompts)}) needed, got {len(seeds)}")
    for w in r.warnings:
        reporter.warn(w)
    device, dtype = pick_device(cfg.device, cfg.dtype)
    check_memory(r, device)
    paths = output_paths(cfg.out, len(cfg.prompts))
    check_writable(paths)
    stages = _Stages(device)
    stages.begin("load")
    reporter.info(f"loading the runs and components on {device} ({str(dtype).removeprefix('torch.')})…")
    par = parallel.plan_for(cfg, r)  # several ranks under torchrun: who makes which prompt, and how
    pipe = parallel.load(par, lambda: Pipeline(cfg, r, reporter))
    stages.end()
    load_seconds, load_memory = stages.seconds.pop("load"), stages.memory.pop("load")
    # the VAE that decodes may have another decoder than the runs' own (the encoder may not differ)
    loaded = {**{role: c.get("fingerprint") for role, c in r.components.items()}, "vae": pipe.vae.fingerprint}
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("prompts", "out")}
    videos = []
    many = len(cfg.prompts) > 1
    with torch.inference_mode():
        for i, (prompt, path) in enumerate(zip(cfg.prompts, paths, strict=True)):
            if not par.takes(i):
                continue
            tag = f"[{i + 1}/{len(paths)}] " if many else ""
            stages = _Stages(device)
            seed = int(seeds[i] if seeds is not None else cfg.seed)
            source = references[i] if references is not None else cfg.semantic_from  # plan file or reference video
            g, noise, plan_eps = initial_noise(r, seed)

            stages.begin("text")
            cond, uncond = pipe.text(prompt)
            stages.end()

            plan = None  # a Base-CT run (plan source "none") renders from the text alone
            if r.plan_source != "none":
                stages.begin("semantic")
            if r.plan_source == "none":
                pass
            elif r.plan_source == "stage 2":
                name = f"{tag}semantic plan"
                reporter.start(name, total=cfg.semantic_steps, unit="steps")
                plan = parallel.same_plan(par, pipe.plan_from_stage2(cond, uncond, g, lambda s, n, name=name: reporter.advance(name)))
                reporter.finish(name)
            elif r.plan_source == "reference video":
                plan = pipe.plan_from_reference(source)
            else:
                plan = pipe.plan_from_file(source)
            if r.plan_source != "none":
                _require_finite(plan, f"the semantic plan of {path.name}" + (f" (from {source})" if source else ""))
                stages.end()

            stages.begin("latent")
            name = f"{tag}latents"
            reporter.start(name, total=cfg.latent_steps, unit="steps")
            try:
                latents = pipe.latents(plan, cond, uncond, noise, plan_eps, lambda s, n, name=name: reporter.advance(name))
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not out_of_memory(err):
                    raise
                raise ConfigError(f"--seconds {r.seconds:g}: stage 1 ran out of memory on {device} ({r.stage1_tokens} tokens, "
                                  f"{cfg.attention or r.lat.dit['attention']} attention); ask for fewer --seconds or a smaller --size") from None
            _require_finite(latents, f"the sampled latents of {path.name}")
            reporter.finish(name)
            stages.end()
            if not par.writes:  # per-video parallel modes: rank 0 decodes and writes
                continue

            meta = {
                "prompt": prompt, "seed": seed, "seconds": r.seconds, "frames": r.frames, "fps": r.fps,
                "size": list(r.size), "semgen": __version__, "settings": settings,
                "sigma": r.sigma if plan is not None else None, "plan": r.plan_source + (f": {source}" if source else ""),
                "latent_run": {"path": str(Path(r.latent_run).resolve()), "compressor_fingerprint": pipe.compressor_fingerprint},
                "semantic_run": str(Path(r.semantic_run).resolve()) if r.semantic_run and r.plan_source == "stage 2" else None,
                "pipeline": r.pipeline,
                "components": loaded,
            }
            # the plan, the mp4 and the sidecar are written under temp names and renamed together
            # once the video is complete (sidecar last), so a kill never pairs old and new files
            sem_path = semantics_path(path) if cfg.save_semantics else None
            sidecar = sidecar_path(path)
            with _Commit([p for p in (sem_path, path, sidecar) if p is not None]) as staged:
                if sem_path is not None:
                    _save_plan(staged[sem_path], plan[0], meta, pipe.compressor_fingerprint, r)

                stages.begin("decode")
                name = f"{tag}decode"
                reporter.start(name, total=r.frames, unit="frames")
                with VideoWriter(staged[path], fps=r.fps, width=r.size[1], height=r.size[0], metadata=meta) as writer:
                    for part in decoded_frames(pipe.vae, latents, r.frames, cfg.decode_chunk):
                        writer.write(part)
                        reporter.advance(name, len(part))
                reporter.finish(name)
                stages.end()
                if writer.frames_written != r.frames:  # cannot happen unless the VAE returns too few frames
                    raise InputError(f"{path}: decoded {writer.frames_written} frames, expected {r.frames}")

                write_json_atomic(staged[sidecar], {
                    **meta, "mp4": str(path), "semantics": str(sem_path) if sem_path else None, "warnings": r.warnings,
                    "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                    "seconds_per_stage": stages.seconds, "load_seconds": load_seconds,
                    "memory_per_stage": stages.memory, "memory_kind": stages.meter.kind,
                })
            videos.append(VideoOut(path, sidecar, sem_path, prompt, r.seconds, r.frames, r.fps, seed, stages.seconds, stages.memory))
    videos = sorted(parallel.gather_objects(par, videos), key=lambda v: str(v.path))  # prompt-parallel: every rank's videos
    return GenerateResult(
        videos=videos, load_seconds=load_seconds, load_memory=load_memory, memory_kind=stages.meter.kind,
        pipeline=r.pipeline, latent_run=r.latent_run, semantic_run=r.semantic_run if r.plan_source == "stage 2" else None,
        device=str(device), dtype=str(dtype).removeprefix("torch."), warnings=r.warnings, components=loaded,
    )


class _Commit:
    """Temp names for files that appear together: ``staged[final]`` is where to write ``final``;
    a clean exit renames every temp over its final name in the order given (the last one is the
    commit marker; its old version is removed first, so an interrupted commit never leaves an old
    marker describing new files); any failure removes the temps and leaves the old files as they
    were. An OSError becomes one line naming the file."""

    def __init__(self, finals: list[Path]) -> None:
        self.tmp = {f: f.with_name(f".{f.name}.tmp-{os.getpid()}") for f in finals}

    def __getitem__(self, final: Path) -> Path:
        return self.tmp[final]

    def __enter__(self) -> "_Commit":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                *files, marker = self.tmp
                _replace(marker, None)
                for final in (*files, marker):
                    _replace(final, self.tmp[final])
            elif isinstance(exc, InputError):  # name the file the user asked for, not its temp name
                message = str(exc)
                for final, tmp in self.tmp.items():
                    message = message.replace(str(tmp), str(final))
                raise InputError(message) from None
        finally:
            for tmp in self.tmp.values():
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass


def _replace(final: Path, tmp: Path | None) -> None:
    """Rename `tmp` over `final` (remove `final` if `tmp` is None), with a one-line error."""
    try:
        if tmp is None:
            final.unlink(missing_ok=True)
        else:
            os.replace(tmp, final)
    except OSError as err:
        raise InputError(f"{final}: cannot write ({err.strerror})") from None


def check_writable(paths: list[Path]) -> None:
    """Refuse, before any model loads, outputs whose folder cannot be created or written (a file
    in the way, a read-only file system, no permission), with one line naming the folder."""
    for folder in sorted({p.parent for p in paths}):
        probe = folder / f".semgen-write-test-{os.getpid()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise InputError(f"--out {paths[0]}: cannot write in {folder} ({err.strerror})") from None


def _save_plan(path: Path, plan, meta: dict, compressor_fingerprint: str, r: Resolved) -> None:
    """The normalised plan (Ts, hs, ws, c) as safetensors, with what made it as string metadata."""
    from semgen_cli.io.shards import save_tensors_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "prompt": meta["prompt"], "seed": str(meta["seed"]), "seconds": repr(r.seconds), "semantic_fps": repr(r.semantic_fps),
        "normalised": "true", "layout": "Ts,hs,ws,c", "compressor_fingerprint": compressor_fingerprint,
        "plan": meta["plan"], "latent_run": meta["latent_run"]["path"], "semantic_run": meta["semantic_run"] or "",
    }
    save_tensors_atomic(path, {"semantic": plan.detach().float().cpu()}, metadata=info)


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


__all__ = ["GenerateConfig", "GenerateResult", "Resolved", "default_pipeline", "decoded_frames", "generate", "read_prompts", "resolve"]

"""`semgen drift`: start-end quality drift of videos, with every choice written down.

Δdrift^M(V) = |M(V_start) − M(V_end)|, V_start the first 15 % of frames and V_end the last 15 %
(FramePack, arXiv 2504.12626, eq. 7; the SemanticGen paper reports it beside VBench). Choices
the definition leaves open, fixed here and reported with every result (docs/drift.md):

- frames: every decoded frame at the native rate (as VBench reads them), or resampled by
  timestamp at `fps` when given; N = number of frames read.
- segments: n = max(3, floor(segment · N)) frames; first = [0, n), last = [N − n, N), half-open,
  in frames read. A video with 2n > N is too short (the segments would overlap).
- M on a segment: the metric computed on that segment as if it were the whole clip (pairwise
  metrics use only pairs inside it; consistency's "first frame" is the segment's first frame).
- Δ points = 100 · Δ for metrics on a 0–1 scale (the 0–100 points papers report, e.g. the
  SemanticGen paper's Δ_drift); relative change % = 100 · Δ / |M(first)|; the mean row is the
  mean of the per-video numbers.
- `aggregate="vde"` adds LV-Bench's Video Drift Error (BlockVid, arXiv 2511.22973): the frames
  cut into N equal chunks, VDE = Σ_{i=2..N} w_i · |M_i − M_1| / |M_1| with w_i = N − i + 1; a
  first chunk with M_1 = 0 makes it undefined, and that is an error for the video, not inf.

Frames are streamed in chunks (`iter_video`); model metrics only encode the segments' frames
unless sliding-window curves are asked for (`curves=True`, used by `--plot`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.metrics import MODEL_METRICS, SPECS, WEIGHT_FREE, Metric
from semgen_cli.reporting import NULL, Reporter

MIN_SEGMENT_FRAMES = 3  # motion_smoothness_linear needs a triplet; the same floor for every metric
CURVE_POINTS = 100  # at most this many sliding windows per video for the plot
DEFINITION = ("delta = |M(first segment) - M(last segment)| (FramePack eq. 7); delta_points = 100 * delta for metrics on "
              "a 0-1 scale; relative_change_pct = 100 * delta / |M(first)|")
VDE_DEFINITION = "vde = sum over chunks i = 2..N of (N - i + 1) * |M_i - M_1| / |M_1|, N equal chunks (LV-Bench)"
AGGREGATES = ("ends", "vde")


@dataclass
class DriftConfig:
    """What `measure_drift` computes; each field is one CLI flag."""

    metrics: tuple[str, ...] | None = None
    """Metric names; None: every weight-free metric plus each model metric whose files are given."""
    segment: float = 0.15
    """Fraction of the frames in each of the two segments, in (0, 0.5]."""
    fps: float | None = None
    """Read frames at this rate (by timestamp); None reads every frame at the native rate."""
    dino: str | None = None
    """Local folder of DINO ViT-B/16 (transformers ViTModel) for subject_consistency."""
    clip_b32: str | None = None
    """Local folder of CLIP ViT-B/32 for background_consistency."""
    clip_l14: str | None = None
    """Local folder of CLIP ViT-L/14 for aesthetic_quality."""
    aesthetic_head: str | None = None
    """safetensors file with the LAION aesthetic head (linear or MLP) for aesthetic_quality."""
    device: str = "auto"
    """Device for model metrics: auto, cpu, cuda, cuda:N."""
    curves: bool = False
    """Also compute sliding-window curves (model metrics then encode every frame)."""
    chunk: int = 32
    """Frames decoded and held at once."""
    aggregate: str = "ends"
    """ends: first vs last segment (FramePack's Δdrift); vde: also LV-Bench's Video Drift Error."""
    chunks: int = 10
    """N, the equal chunks of the VDE."""

    def __post_init__(self) -> None:
        if not (0.0 < self.segment <= 0.5):
            raise ConfigError(f"--segment {self.segment}: must be a fraction in (0, 0.5], e.g. 0.15")
        if self.fps is not None and not self.fps > 0:
            raise ConfigError(f"--fps {self.fps}: must be positive (leave it out to read every frame)")
        if self.chunk < 1:
            raise ConfigError(f"chunk {self.chunk}: must be at least 1")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"--aggregate {self.aggregate}: must be one of {', '.join(AGGREGATES)}")
        if self.chunks < 2:
            raise ConfigError(f"--chunks {self.chunks}: the VDE needs at least 2 chunks (default 10)")


@dataclass
class MetricResult:
    first: float | None
    last: float | None
    delta: float
    delta_points: float | None  # 100 · delta on a 0–1 metric (the papers' points); None otherwise
    relative_change_pct: float | None  # 100 · delta / |first|
    change: float | None  # last − first, signed (direction of the drift)
    chunks: list[float] | None = None  # M of each VDE chunk (aggregate "vde")
    vde: float | None = None  # LV-Bench's Video Drift Error (aggregate "vde")

    STATS = ("first", "last", "delta", "delta_points", "relative_change_pct", "change", "vde")


@dataclass
class VideoResult:
    path: str
    frames_total: int
    native_fps: float
    width: int
    height: int
    frames_read: int
    read_fps: float
    segment_frames: int
    first: tuple[int, int]  # [start, stop) in frames read
    last: tuple[int, int]
    seconds: float
    metrics: dict[str, MetricResult]
    model_input: dict[str, tuple[int, int]] = field(default_factory=dict)  # metric → (H, W) fed to its model
    curves: dict[str, Any] | None = None


@dataclass
class VideoError:
    path: str
    error: str


@dataclass
class DriftResult:
    config: DriftConfig
    metrics: dict[str, dict[str, Any]]  # name → description (definition, scale, model, fingerprint, ...)
    videos: list[VideoResult]
    errors: list[VideoError]

    def mean(self) -> dict[str, dict[str, float | None]]:
        """Per metric, the mean over videos of each of `MetricResult.STATS`."""
        out: dict[str, dict[str, float | None]] = {}
        for name in self.metrics:
            rows = [v.metrics[name] for v in self.videos]
            out[name] = {k: _mean([getattr(r, k) for r in rows]) for k in MetricResult.STATS}
        return out

    def to_dict(self) -> dict[str, Any]:
        """The `--json` document (keys documented in docs/drift.md)."""
        cfg = self.config
        videos = []
        for v in self.videos:
            d = {
                "path": v.path,
                "frames_total": v.frames_total,
                "native_fps": v.native_fps,
                "width": v.width,
                "height": v.height,
                "frames_read": v.frames_read,
                "read_fps": v.read_fps,
                "segments": {
                    "frames_each": v.segment_frames,
                    "first": _range(v.first, v.read_fps),
                    "last": _range(v.last, v.read_fps),
                },
                "model_input": {k: list(hw) for k, hw in v.model_input.items()},
                "seconds": round(v.seconds, 3),
                "metrics": {k: _metric_dict(m, cfg) for k, m in v.metrics.items()},
            }
            if v.curves is not None:
                d["curves"] = v.curves
            videos.append(d)
        return {
            "definition": DEFINITION + ("; " + VDE_DEFINITION if cfg.aggregate == "vde" else ""),
            "settings": {
                "aggregate": cfg.aggregate,
                **({"chunks": cfg.chunks, "chunk_rule": "chunk i = frames [floor((i-1) N_f / N), floor(i N_f / N)), N_f = frames read"}
                   if cfg.aggregate == "vde" else {}),
                "segment": cfg.segment,
                "segment_rule": f"n = max({MIN_SEGMENT_FRAMES}, floor(segment * N)); first = [0, n), last = [N - n, N), N = frames read",
                "fps": cfg.fps if cfg.fps is not None else "native (every frame)",
                "pixels": "RGB uint8 as decoded, native resolution (no resize) for pixel metrics",
                "device": cfg.device,
            },
            "metrics": self.metrics,
            "videos": videos,
            "mean": {"videos": len(self.videos), "metrics": {k: _trim(m, cfg) for k, m in self.mean().items()}},
            "errors": [asdict(e) for e in self.errors],
        }


def _metric_dict(m: MetricResult, cfg: DriftConfig) -> dict[str, Any]:
    return _trim(asdict(m), cfg)


def _trim(d: dict[str, Any], cfg: DriftConfig) -> dict[str, Any]:
    """The VDE keys only when asked for, so the default document keeps its shape."""
    return d if cfg.aggregate == "vde" else {k: v for k, v in d.items() if k not in ("chunks", "vde")}


def _range(r: tuple[int, int], fps: float) -> dict[str, Any]:
    return {"start": r[0], "stop": r[1], "seconds": [round(r[0] / fps, 4), round(r[1] / fps, 4)]}


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def segment_length(num_frames: int, segment: float) -> int:
    """Frames per segment: max(3, floor(segment · N)); the epsilon keeps 0.15 · 140 = 21, not 20."""
    return max(MIN_SEGMENT_FRAMES, int(math.floor(segment * num_frames + 1e-9)))


def segment_ranges(num_frames: int, segment: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """Half-open frame ranges of the first and last segments; ValueError if they would overlap."""
    n = segment_length(num_frames, segment)
    if 2 * n > num_frames:
        raise ValueError(f"{num_frames} frames cannot hold two segments of {n} frames")
    return (0, n), (num_frames - n, num_frames)


def chunk_ranges(num_frames: int, chunks: int) -> list[tuple[int, int]]:
    """The VDE's N equal chunks as half-open frame ranges (lengths differ by at most one);
    ValueError when a chunk would hold fewer than MIN_SEGMENT_FRAMES frames."""
    bounds = [num_frames * i // chunks for i in range(chunks + 1)]
    if num_frames // chunks < MIN_SEGMENT_FRAMES:
        raise ValueError(f"{num_frames} frames cannot make {chunks} chunks of {MIN_SEGMENT_FRAMES} frames")
    return list(itertools.pairwise(bounds))


def video_drift_error(scores: Sequence[float]) -> float:
    """LV-Bench's VDE of per-chunk scores M_1..M_N: Σ_{i≥2} (N − i + 1)·|M_i − M_1| / |M_1|.
    ZeroDivisionError when M_1 = 0 (the relative change is undefined)."""
    n, m1 = len(scores), scores[0]
    if m1 == 0:
        raise ZeroDivisionError("the first chunk scores 0")
    return float(sum((n - i + 1) * abs(scores[i - 1] - m1) / abs(m1) for i in range(2, n + 1)))


def resolve_metrics(config: DriftConfig) -> list[str]:
    """The metric names to compute, checked against the flags; ConfigError naming what is missing."""
    given = {"--dino": config.dino, "--clip-b32": config.clip_b32, "--clip-l14": config.clip_l14, "--aesthetic-head": config.aesthetic_head}
    if config.metrics is None:
        names = list(WEIGHT_FREE) + [m for m in MODEL_METRICS if all(given[f] for f in SPECS[m].needs)]
    else:
        names = list(dict.fromkeys(config.metrics))
        unknown = [n for n in names if n not in SPECS]
        if unknown:
            hint = " (VBench's AMT motion smoothness is not available; the weight-free one is motion_smoothness_linear)" if "motion_smoothness" in unknown else ""
            raise ConfigError(f"--metrics {','.join(unknown)}: unknown metric{hint}; choose from {', '.join(SPECS)}")
        if not names:
            raise ConfigError("--metrics: no metric given")
    for name in names:
        missing = [f for f in SPECS[name].needs if not given[f]]
        if missing:
            raise ConfigError(f"{name} needs {' and '.join(f + ' PATH' for f in missing)} (local files; nothing is downloaded)")
    return names


def build_metrics(names: Sequence[str], config: DriftConfig) -> dict[str, Metric]:
    """Instantiate the metrics, loading each model once (ConfigError naming the flag on failure)."""
    from semgen_cli.metrics.pixel import PIXEL_METRICS

    out: dict[str, Metric] = {}
    device = None
    for name in names:
        if name in PIXEL_METRICS:
            out[name] = PIXEL_METRICS[name]()
            continue
        from semgen_cli.metrics import models as M

        device = device or M.resolve_device(config.device)
        if name == "subject_consistency":
            out[name] = M.Consistency(name, M.load_dino(config.dino, device), M.SUBJECT_DEF)
        elif name == "background_consistency":
            out[name] = M.Consistency(name, M.load_clip(config.clip_b32, "--clip-b32", device), M.BACKGROUND_DEF)
        elif name == "aesthetic_quality":
            head = M.AestheticHead(config.aesthetic_head)
            out[name] = M.Aesthetic(M.load_clip(config.clip_l14, "--clip-l14", device), head)
    return out


def measure_drift(
    paths: Sequence[str | Path],
    metrics: Sequence[str] | None = None,
    segment: float = 0.15,
    *,
    config: DriftConfig | None = None,
    reporter: Reporter | None = None,
    **options: Any,
) -> DriftResult:
    """Measure Δdrift for each video. Bad videos (missing, empty, corrupt, too short) become
    `errors` entries and the others still get their rows; bad flags raise ConfigError at once.

    Either pass a `config`, or `metrics`/`segment` plus any other DriftConfig field as a keyword.
    """
    if config is None:
        config = DriftConfig(metrics=tuple(metrics) if metrics is not None else None, segment=segment, **options)
    reporter = reporter or NULL
    if not paths:
        raise ConfigError("no video given: pass one or more VIDEO paths")
    names = resolve_metrics(config)
    instances = build_metrics(names, config)
    described = {n: m.describe() for n, m in instances.items()}
    videos: list[VideoResult] = []
    errors: list[VideoError] = []
    for path in paths:
        try:
            videos.append(measure_video(str(path), instances, config, reporter))
        except InputError as err:
            errors.append(VideoError(str(path), str(err)))
    return DriftResult(config, described, videos, errors)


def measure_video(path: str, metrics: dict[str, Metric], config: DriftConfig, reporter: Reporter = NULL) -> VideoResult:
    """One video: stream its frames through every metric, then score the two segments."""
    from semgen_cli.io.video import probe, sample_indices

    t0 = time.perf_counter()
    with quiet_native_stderr():
        info = probe(path)
    n_read = len(sample_indices(info.frames, info.fps, config.fps))
    read_fps = config.fps if config.fps is not None else info.fps
    first, last, vde_chunks = _ranges(path, n_read, config)
    wanted = None
    if not config.curves and vde_chunks is None:
        wanted = np.zeros(n_read, bool)
        wanted[first[0] : first[1]] = wanted[last[0] : last[1]] = True
    for m in metrics.values():
        m.begin(n_read, wanted)
    _stream(path, metrics, config, n_read, reporter)
    results = {name: _segment_result(m, first, last) for name, m in metrics.items()}
    if vde_chunks is not None:
        _add_vde(path, metrics, vde_chunks, results)
    model_input = {name: m.input_hw for name, m in metrics.items() if getattr(m, "input_hw", None) is not None}
    curves = _curves(metrics, n_read, first, read_fps) if config.curves else None
    return VideoResult(
        path=path,
        frames_total=info.frames,
        native_fps=info.fps,
        width=info.width,
        height=info.height,
        frames_read=n_read,
        read_fps=read_fps,
        segment_frames=first[1] - first[0],
        first=first,
        last=last,
        seconds=time.perf_counter() - t0,
        metrics=results,
        model_input=model_input,
        curves=curves,
    )


def _ranges(path: str, n_read: int, config: DriftConfig) -> tuple[tuple[int, int], tuple[int, int], list[tuple[int, int]] | None]:
    """(first segment, last segment, the VDE's chunks or None) of a video of `n_read` frames; a
    video too short for them is a one-line error."""
    try:
        first, last = segment_ranges(n_read, config.segment)
    except ValueError:
        need = 2 * MIN_SEGMENT_FRAMES
        raise InputError(
            f"{path}: too short for drift: {n_read} frames read, two segments need at least {need} "
            f"(and {config.segment:g} of the length each)"
        ) from None
    if config.aggregate != "vde":
        return first, last, None
    try:
        return first, last, chunk_ranges(n_read, config.chunks)
    except ValueError:
        raise InputError(
            f"{path}: too short for --aggregate vde with {config.chunks} chunks: {n_read} frames read, "
            f"need at least {MIN_SEGMENT_FRAMES * config.chunks} ({MIN_SEGMENT_FRAMES} per chunk); pass fewer --chunks"
        ) from None


def _stream(path: str, metrics: dict[str, Metric], config: DriftConfig, n_read: int, reporter: Reporter) -> None:
    """Decode the video chunk by chunk into every metric; the container's frame count is checked."""
    from semgen_cli.io.video import iter_video

    task = Path(path).name
    reporter.start(task, total=n_read, unit="frames")
    start = 0
    chunks = iter_video(path, fps=config.fps, chunk=config.chunk)
    while True:
        with quiet_native_stderr():  # the decoder's own log lines would break the one-line error
            frames = next(chunks, None)
        if frames is None:
            break
        for m in metrics.values():
            m.update(frames, start)
        start += len(frames)
        reporter.advance(task, len(frames))
    reporter.finish(task)
    if start != n_read:
        raise InputError(f"{path}: decoded {start} frames but the container promised {n_read}")


def _add_vde(path: str, metrics: dict[str, Metric], vde_chunks: list[tuple[int, int]], results: dict) -> None:
    """Each score metric's per-chunk scores and VDE into its result (a distance has no per-chunk score)."""
    for name, m in metrics.items():
        if m.kind == "distance":  # no per-chunk score to compare with the first chunk's
            continue
        scores = [m.score(a, b) for a, b in vde_chunks]
        try:
            vde = video_drift_error(scores)
        except ZeroDivisionError:
            a, b = vde_chunks[0]
            raise InputError(
                f"{path}: {name} is 0 on the first chunk (frames [{a}, {b})), so its VDE (change relative to the "
                f"first chunk) is undefined; leave {name} out with --metrics or use --aggregate ends"
            ) from None
        results[name].chunks, results[name].vde = scores, vde


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what C libraries (ffmpeg, decord) write to file descriptor 2 while decoding, so a
    corrupt file yields only semgen's one-line error; SEMGEN_DEBUG=1 keeps their output."""
    if os.environ.get("SEMGEN_DEBUG") == "1":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreter): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _segment_result(m: Metric, first: tuple[int, int], last: tuple[int, int]) -> MetricResult:
    if m.kind == "distance":
        d = m.distance(first, last)
        return MetricResult(first=None, last=None, delta=d, delta_points=100.0 * d if m.unit_interval else None,
                            relative_change_pct=None, change=None)
    a, b = m.score(*first), m.score(*last)
    pct = 100.0 * abs(a - b) / abs(a) if a != 0 else None
    points = 100.0 * abs(a - b) if m.unit_interval else None
    return MetricResult(first=a, last=b, delta=abs(a - b), delta_points=points, relative_change_pct=pct, change=b - a)


def _curves(metrics: dict[str, Metric], num_frames: int, first: tuple[int, int], fps: float) -> dict[str, Any]:
    """Each metric on sliding windows as long as a segment (a distance metric: window vs the
    first segment), at most CURVE_POINTS windows; `t` is the window centre in seconds."""
    n = first[1] - first[0]
    starts = np.unique(np.linspace(0, num_frames - n, num=min(num_frames - n + 1, CURVE_POINTS)).round().astype(int))
    out: dict[str, Any] = {
        "window_frames": n,
        "start": starts.tolist(),
        "t": [round((s + (n - 1) / 2) / fps, 4) for s in starts],
    }
    for name, m in metrics.items():
        if m.kind == "distance":
            out[name] = [m.distance(first, (int(s), int(s) + n)) for s in starts]
        else:
            out[name] = [m.score(int(s), int(s) + n) for s in starts]
    return out


def plot_drift(result: DriftResult, path: str | Path) -> Path:
    """PNG with one panel per metric: each video's sliding-window curve over time, its first and
    last segments shaded. Needs `result` computed with curves=True."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    videos = [v for v in result.videos if v.curves is not None]
    if not videos:
        raise InputError(f"{path}: nothing to plot (no video could be measured)")
    names = list(result.metrics)
    fig = Figure(figsize=(9, 1.9 * len(names) + 0.8), layout="constrained")
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    colours = matplotlib.colormaps["tab10"]
    for ax, name in zip(axes, names, strict=True):
        for i, v in enumerate(videos):
            c = colours(i % 10)
            label = f"{Path(v.path).name}  Δ={v.metrics[name].delta:.4g}"
            ax.plot(v.curves["t"], v.curves[name], color=c, lw=1.4, label=label)
            for a, b in (v.first, v.last):
                ax.axvspan(a / v.read_fps, b / v.read_fps, color=c if len(videos) > 1 else "0.5", alpha=0.12, lw=0)
        desc = result.metrics[name]
        title = f"{name}" + (" (window vs first segment)" if desc["kind"] == "distance" else "")
        ax.set_title(title, loc="left", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", frameon=False)
    n = videos[0].segment_frames
    axes[-1].set_xlabel(f"time of the window centre (s); window = segment length ({n} frames for the first video); shaded = first/last segment", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path

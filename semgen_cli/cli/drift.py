"""`semgen drift`: start-end quality drift (FramePack Δdrift) of one or more videos."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from semgen_cli.cli._common import console, err_console, settings_table
from semgen_cli.cli.options import Defaults

D = Defaults("semgen_cli.steps.drift", "DriftConfig")

Folder = Annotated[Optional[Path], typer.Option(show_default=False, file_okay=False, dir_okay=True)]


def command(
    videos: Annotated[list[Path], typer.Argument(help="Video files to measure (mp4, mov, mkv, webm, ...).", show_default=False)],
    metrics: Annotated[
        Optional[list[str]],
        typer.Option(
            "--metrics",
            "-m",
            help="Metrics, comma-separated or repeated. Default: every weight-free metric, plus each model metric "
            "whose files are given. Weight-free: brightness, sharpness, colourfulness, temporal_flickering, "
            "motion_smoothness_linear, colour_histogram_distance. Models: subject_consistency (--dino), "
            "background_consistency (--clip-b32), aesthetic_quality (--clip-l14 and --aesthetic-head).",
            show_default=False,
        ),
    ] = D.metrics,
    segment: Annotated[float, typer.Option(help="Fraction of the frames in each of the first and last segments.")] = D.segment,
    fps: Annotated[
        Optional[float], typer.Option(help="Read frames at this rate (by timestamp). Default: every frame at the native rate.", show_default=False)
    ] = D.fps,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout (no table, no progress).")] = False,
    plot: Annotated[
        Optional[Path], typer.Option(help="Write a PNG of each metric over time (sliding window), segments shaded.", dir_okay=False, show_default=False)
    ] = None,
    dino: Annotated[Optional[Path], typer.Option("--dino", help="Local folder of DINO ViT-B/16 (e.g. facebook/dino-vitb16) for subject_consistency.", show_default=False)] = D.dino,
    clip_b32: Annotated[Optional[Path], typer.Option("--clip-b32", help="Local folder of CLIP ViT-B/32 (e.g. openai/clip-vit-base-patch32) for background_consistency.", show_default=False)] = D.clip_b32,
    clip_l14: Annotated[Optional[Path], typer.Option("--clip-l14", help="Local folder of CLIP ViT-L/14 (e.g. openai/clip-vit-large-patch14) for aesthetic_quality.", show_default=False)] = D.clip_l14,
    aesthetic_head: Annotated[Optional[Path], typer.Option("--aesthetic-head", help="safetensors file of the LAION aesthetic head (linear 768→1 or the MLP).", dir_okay=False, show_default=False)] = D.aesthetic_head,
    device: Annotated[str, typer.Option(help="Device for model metrics: auto, cpu, cuda, cuda:N.")] = D.device,
    aggregate: Annotated[str, typer.Option(help="ends: first vs last segment (FramePack's Δdrift, as the SemanticGen paper reports); vde: also LV-Bench's Video Drift Error over --chunks equal chunks.")] = D.aggregate,
    chunks: Annotated[int, typer.Option(help="N, the equal chunks of --aggregate vde.")] = D.chunks,
) -> None:
    """Measure quality drift: each metric on the first and the last 15 % of the frames, Δ = |first − last|
    (FramePack's Δdrift), in points (100·Δ) for metrics on a 0–1 scale as papers report it, and the
    change relative to the first. --aggregate vde adds LV-Bench's Video Drift Error. Several videos give one row each plus the mean. The
    choices (frames read and fps, segment frame ranges, aggregation, models and fingerprints, image
    sizes) are printed under the table and are part of --json. A video that cannot be measured gets a
    one-line error naming it; the others still get their rows; the exit code is then 2.

    Example: semgen drift out.mp4 --plot drift.png
    """
    from semgen_cli.cli._common import RichReporter
    from semgen_cli.steps.drift import DriftConfig, measure_drift, plot_drift

    names = [n.strip() for item in metrics or [] for n in item.split(",") if n.strip()] if metrics else None
    config = DriftConfig(
        metrics=tuple(names) if names is not None else None,
        segment=segment,
        fps=fps,
        dino=_str(dino),
        clip_b32=_str(clip_b32),
        clip_l14=_str(clip_l14),
        aesthetic_head=_str(aesthetic_head),
        device=device,
        curves=plot is not None,
        aggregate=aggregate,
        chunks=chunks,
    )
    if as_json:
        result = measure_drift([str(v) for v in videos], config=config)
    else:
        settings_table(
            "semgen drift",
            {
                "videos": len(videos),
                "segment": f"{segment:g} of the frames read, at least 3 frames, first and last",
                "frames": f"every frame at {fps:g} fps (by timestamp)" if fps else "every frame at the native rate",
                "Δ": "|M(first) − M(last)| (FramePack eq. 7); Δ points = 100·Δ for metrics on a 0–1 scale "
                     "(the paper's Δ_drift); rel. change % = 100·Δ/|M(first)|",
                **({"VDE": f"Σ_(i=2..{chunks}) ({chunks} − i + 1)·|M_i − M_1|/|M_1| over {chunks} equal chunks (LV-Bench)"}
                   if aggregate == "vde" else {}),
                "plot": plot or "no (--plot FILE.png)",
            },
        )
        with RichReporter() as reporter:
            result = measure_drift([str(v) for v in videos], config=config, reporter=reporter)
    plot_path = plot_drift(result, plot) if plot is not None and result.videos else None

    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n")
    else:
        _render(result, plot_path)
    for err in result.errors:
        err_console.print(f"[bold red]error:[/] {_escape(err.error)}", soft_wrap=True)
    if result.errors:
        raise typer.Exit(2)


def _str(p: Path | None) -> str | None:
    return str(p) if p is not None else None


def _escape(text: str) -> str:
    from rich.markup import escape

    from semgen_cli.cli._common import printable

    return escape(printable(text))


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def _render(result, plot_path: Path | None) -> None:
    from rich.table import Table

    vde = result.config.aggregate == "vde"
    table = Table(title="drift", title_justify="left", header_style="bold")
    columns = [("video", "left"), ("metric", "left"), ("first", "right"), ("last", "right"), ("Δ", "right"),
               ("Δ pts (100·Δ)", "right"), ("rel. change %", "right")]
    for col, justify in columns + ([("VDE", "right")] if vde else []):
        table.add_column(col, justify=justify)
    label = _labels([v.path for v in result.videos])
    rows = [(label[v.path], v.metrics) for v in result.videos]
    if len(result.videos) > 1:
        mean = result.mean()
        rows.append((f"mean of {len(result.videos)}", {k: _Row(**m) for k, m in mean.items()}))
    for video_name, per_metric in rows:
        for i, (name, m) in enumerate(per_metric.items()):
            pct = "—" if m.relative_change_pct is None else f"{m.relative_change_pct:.1f}"
            points = "—" if m.delta_points is None else f"{m.delta_points:.2f}"
            cells = [_num(m.first), _num(m.last), _num(m.delta), points, pct] + ([_num(m.vde)] if vde else [])
            table.add_row(_escape(video_name) if i == 0 else "", name, *cells, end_section=i == len(per_metric) - 1)
    if result.videos:
        console.print(table)

    choices: list[tuple[str, str]] = []
    for v in result.videos:
        (a0, b0), (a1, b1) = v.first, v.last
        choices.append(
            (
                label[v.path],
                f"{v.frames_read} of {v.frames_total} frames read at {v.read_fps:g} fps ({v.width}×{v.height}); "
                f"segments of {v.segment_frames} frames: first [{a0}, {b0}), last [{a1}, {b1}) "
                f"= {a0 / v.read_fps:.2f}–{b0 / v.read_fps:.2f} s and {a1 / v.read_fps:.2f}–{b1 / v.read_fps:.2f} s"
                + (f"; VDE chunks of {v.frames_read // result.config.chunks}–{-(-v.frames_read // result.config.chunks)} frames" if vde else ""),
            )
        )
    for name, d in result.metrics.items():
        text = f"{d['aggregation']}; scale {d['scale']}"
        if vde and d["kind"] == "distance":
            text += "; no VDE (no per-chunk score)"
        if d["model"]:
            sizes = {tuple(v.model_input[name]) for v in result.videos if name in v.model_input}
            fed = ", ".join(f"{h}×{w}" for h, w in sorted(sizes)) or "—"
            text += f"; model {d['model']} [sha256 {d['fingerprint']}]; input {d['image_size']} → {fed}"
        else:
            text += "; pixels at native size"
        choices.append((name, text))
    if result.videos:
        settings_table("choices", choices)
    if plot_path is not None:
        console.print(f"[bold]plot:[/] {_escape(str(plot_path))}")


def _labels(paths: list[str]) -> dict[str, str]:
    """File names when they are unique, else the paths as given."""
    names = [Path(p).name for p in paths]
    unique = len(set(names)) == len(names)
    return {p: (n if unique else p) for p, n in zip(paths, names, strict=True)}


class _Row:
    def __init__(self, **stats) -> None:
        self.__dict__.update(stats)

"""`semgen extract`: encode a folder of videos into safetensors shards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from semgen_cli.cli.options import Defaults

D = Defaults("semgen_cli.steps.extract", "ExtractConfig")


def command(
    videos: Annotated[Path, typer.Argument(help="Folder of videos (recursive) with metadata.jsonl or .txt captions.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for shards and index.json.")] = Path(D.out),
    semantic: Annotated[str, typer.Option(help="Semantic encoder: qwen2.5-vl:PATH, vjepa2:PATH, videomae:PATH, toy (bundled), tiny.")] = D.semantic,
    vae: Annotated[str, typer.Option(help="VAE: wan:PATH, ltx:PATH, cogvideox:PATH, toy (bundled), tiny.")] = D.vae,
    text: Annotated[str, typer.Option(help="Text encoder: umt5:PATH, t5:PATH, minilm, tiny.")] = D.text,
    size: Annotated[Optional[str], typer.Option(help="Frame size HxW (or N) for the VAE; default: first video's size rounded down to ×16.")] = D.size,
    fps: Annotated[float, typer.Option(help="Frame rate the VAE sees.")] = D.fps,
    semantic_fps: Annotated[float, typer.Option(help="Frame rate the semantic encoder sees (paper: 1.6).")] = D.semantic_fps,
    semantic_size: Annotated[Optional[str], typer.Option(help="Frame size HxW given to the semantic encoder; default: --size.")] = D.semantic_size,
    min_pixels: Annotated[Optional[int], typer.Option(help="Least pixels per frame the semantic encoder resizes to; default: Qwen2.5-VL's video bound 128·28² (the toy and tiny towers: 56²).")] = D.min_pixels,
    max_pixels: Annotated[Optional[int], typer.Option(help="Most pixels per frame the semantic encoder resizes to; default: Qwen2.5-VL's video bound 768·28² (the toy and tiny towers: 1280·28²).")] = D.max_pixels,
    max_seconds: Annotated[Optional[float], typer.Option(help="Cut each video to its first N seconds (reported per sample).")] = D.max_seconds,
    shard_size: Annotated[int, typer.Option(help="Videos per shard.")] = D.shard_size,
    num_workers: Annotated[int, typer.Option(help="Decoding processes beside the encoders (0: decode inline).")] = D.num_workers,
    dtype: Annotated[str, typer.Option(help="Storage dtype: float32, float16, bfloat16.")] = D.dtype,
    allow_uncaptioned: Annotated[bool, typer.Option(help="Keep videos without captions (empty text) instead of failing them.")] = D.allow_uncaptioned,
    device: Annotated[str, typer.Option(help="Encoder device: auto, cpu, cuda, cuda:N.")] = D.device,
) -> None:
    """Encode videos into shards: semantic features, VAE latents and text embeddings.

    Writes OUT/shard-00000.safetensors … with a .jsonl of records beside each, failures.jsonl for inputs that could not be used, and index.json last. A rerun resumes: finished shards are kept.

    Exit code 0 when every video was extracted, 1 when some failed (listed in failures.jsonl), 2 on a usage error.
    """
    from rich.markup import escape

    from semgen_cli.cli._common import RichReporter, console, printable, settings_table, summary
    from semgen_cli.cli.options import parse_size
    from semgen_cli.components.semantic_encoder import default_pixel_bounds
    from semgen_cli.steps.extract import ExtractConfig, extract

    cfg = ExtractConfig(
        videos=str(videos), out=str(out), semantic=semantic, vae=vae, text=text,
        size=parse_size(size), fps=fps, semantic_fps=semantic_fps,
        semantic_size=parse_size(semantic_size, "--semantic-size"), min_pixels=min_pixels, max_pixels=max_pixels,
        max_seconds=max_seconds,
        shard_size=shard_size, num_workers=num_workers, dtype=dtype,
        allow_uncaptioned=allow_uncaptioned, device=device,
    )
    settings_table("semgen extract", {
        "videos": videos, "out": out, "semantic": semantic, "vae": vae, "text": text,
        "size": "first video, ×16" if cfg.size is None else cfg.size, "fps (VAE)": fps,
        "fps (semantic)": semantic_fps,
        "pixels per frame (semantic)": "{} .. {}".format(*(given or default for given, default in
                                                          zip((min_pixels, max_pixels), default_pixel_bounds(semantic), strict=True))),
        "max seconds": max_seconds or "whole videos",
        "shard size": shard_size, "workers": num_workers, "dtype": dtype,
    })
    with RichReporter() as reporter:
        result = extract(cfg, reporter)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 indexes and reports for all
        return
    rows = {
        "samples": result.samples, "failed": result.failed,
        "seconds of video": round(result.seconds_of_video, 2),
        "shards": f"{result.shards_written} written, {result.shards_kept} kept from an earlier run",
        "index": out / "index.json",
    }
    if result.truncated:
        rows["cut by --max-seconds"] = f"{result.truncated} videos"
    if result.failed:
        rows["failures"] = out / "failures.jsonl"
    rows.update({f"time {k}": f"{v:.1f} s" for k, v in result.timings.items()})
    summary("extracted", rows, next_command=f"semgen fit-compressor {out} --out runs/compressor")
    if result.failed:
        console.print(f"[yellow]{result.failed} input(s) could not be used; see {escape(printable(out / 'failures.jsonl'))}[/]")
        raise typer.Exit(1)

"""Extraction throughput (clips/s) and its ratio to decode-only time on the same clips.

Renders ``--count`` toy clips (``semgen_cli.toy.dataset.write_toy_dataset``, the data behind
``semgen toy-data``) into a temporary folder, then in the same run times

1. decode only: every clip read at the VAE fps and at the semantic fps, resized to ``--size``,
   through the very decoder ``semgen extract`` uses (``semgen_cli.io.decoding.Decoder`` in
   ``--num-workers`` spawned processes, or inline with 0), results thrown away;
2. ``semgen_cli.steps.extract.extract`` on the same folder (decode + VAE, semantic and text
   encoders + shard writing), with the same decoding settings.

"extract s" is extraction's own loop (``timings["extract"]``: decode, encode, write); loading
the components is reported separately. The ratio extract / decode says how far extraction is
from being decode-bound (1.0 = the encoders are free; with workers, decoding overlaps encoding).

    python benchmarks/extract.py --count 8 --seconds 4
    python benchmarks/extract.py --vae wan:PATH --semantic qwen2.5-vl:PATH --text umt5:PATH --size 480x832
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    """``64`` or ``HxW``."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    h, w = parts
    return int(h), int(w)


def decode_only(cfg, videos: list[Path]) -> tuple[float, int, int]:
    """Seconds to decode ``videos`` exactly as extraction's workers do; (seconds, VAE frames, semantic frames)."""
    from semgen_cli.io.decoding import Decoder

    frames = sem_frames = 0
    t0 = time.perf_counter()
    with Decoder(cfg) as decoder:
        for decoded in decoder.map(videos):
            if "error" in decoded:
                raise RuntimeError(decoded["error"])
            frames += len(decoded["frames"])
            sem_frames += len(decoded["semantic_frames"])
    return time.perf_counter() - t0, frames, sem_frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=8, help="number of toy clips")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each toy clip")
    ap.add_argument("--size", type=_size, default=(64, 64), help="frame size: N (square toy clips, even) or HxW for extraction (multiples of 16)")
    ap.add_argument("--toy-fps", type=float, default=8.0, help="frame rate the toy clips are rendered at")
    ap.add_argument("--fps", type=float, default=None, help="frame rate the VAE sees (extract --fps); default: --toy-fps, as the README's toy pipeline")
    ap.add_argument("--semantic-fps", type=float, default=1.6, help="frame rate the semantic encoder sees")
    ap.add_argument("--vae", default="tiny")
    ap.add_argument("--semantic", default="tiny")
    ap.add_argument("--text", default="tiny")
    ap.add_argument("--num-workers", type=int, default=1, help="decoding processes (0: inline)")
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the main process (0: torch's default)")
    ap.add_argument("--keep", type=Path, default=None, help="render clips and write shards under this folder instead of a temp one")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = ap.parse_args()

    import torch

    from semgen_cli.io.video import list_videos
    from semgen_cli.steps.extract import ExtractConfig, extract
    from semgen_cli.toy.dataset import ToyDataConfig, write_toy_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    H, W = args.size
    if args.fps is None:
        args.fps = args.toy_fps
    tmp = tempfile.TemporaryDirectory()
    root = args.keep or Path(tmp.name)
    videos_dir, out_dir = root / "videos", root / "data"

    t0 = time.perf_counter()
    toy = write_toy_dataset(videos_dir, ToyDataConfig(count=args.count, seconds=args.seconds, fps=args.toy_fps, size=max(H, W)), overwrite=True)
    print(f"rendered {toy.clips} toy clips ({toy.seconds:.1f} s of video, {max(H, W)}x{max(H, W)} at {args.toy_fps:g} fps) in {time.perf_counter() - t0:.1f} s")
    videos = list_videos(videos_dir)

    def config(**kw) -> ExtractConfig:
        return ExtractConfig(
            videos=str(videos_dir), out=str(out_dir), vae=args.vae, semantic=args.semantic, text=args.text,
            size=(H, W), fps=args.fps, semantic_fps=args.semantic_fps, shard_size=args.shard_size,
            num_workers=args.num_workers, dtype=args.dtype, device=args.device, **kw,
        )

    decode_s, frames, sem_frames = decode_only(config(semantic_size=(H, W)), videos)

    result = extract(config())
    extract_s = result.timings["extract"]
    load_s = result.timings.get("load components", 0.0)
    if result.samples != len(videos):
        raise SystemExit(f"extract kept {result.samples} of {len(videos)} clips ({result.failed} failed); see {out_dir}/failures.jsonl")

    settings = {
        "vae": args.vae, "semantic": args.semantic, "text": args.text, "size": f"{H}x{W}",
        "fps": args.fps, "semantic_fps": args.semantic_fps, "toy_fps": args.toy_fps,
        "num_workers": args.num_workers, "dtype": args.dtype, "device": args.device,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
    }
    rows = {
        "clips": len(videos),
        "seconds of video": round(toy.seconds, 2),
        "frames decoded (VAE / semantic)": f"{frames} / {sem_frames}",
        "decode-only s": round(decode_s, 3),
        "extract s": round(extract_s, 3),
        "load components s": round(load_s, 3),
        "decode-only clips/s": round(len(videos) / decode_s, 2),
        "extract clips/s": round(len(videos) / extract_s, 2),
        "extract/decode ratio": round(extract_s / decode_s, 2),
    }
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    width = max(len(k) for k in rows)
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  -----")
    for k, v in rows.items():
        print(f"{k:<{width}}  {v}")
    if args.json:
        print(json.dumps({"settings": settings, **rows}))
    tmp.cleanup()


if __name__ == "__main__":
    main()

"""Seconds per minute of 480p video for `semgen drift`'s weight-free metrics.

Synthesizes a 854×480 clip (moving gradients + noise, so H.264 has real work), then times:
decoding alone, each metric alone on decoded frames, and the whole `measure_drift` call
(decode + every weight-free metric, streamed). Results are scaled to one minute of video.

    python benchmarks/drift.py [--seconds 10] [--fps 24] [--keep out.mp4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def synth(path: Path, seconds: float, fps: int, width: int = 854, height: int = 480) -> int:
    from semgen_cli.io.video import VideoWriter

    n = int(seconds * fps)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(0)
    with VideoWriter(path, fps=fps, width=width, height=height, crf=23, preset="ultrafast") as w:
        for i in range(n):
            r = (x * 0.5 + i * 3) % 256
            g = (y * 0.5 + 128 * np.sin(i / 20)) % 256
            b = ((x + y) * 0.25 + i) % 256
            frame = np.stack([r, g, b], -1) + rng.normal(0, 6, (height, width, 1))
            w.write(np.clip(frame, 0, 255).astype(np.uint8))
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the synthetic clip (result is scaled to 60 s)")
    ap.add_argument("--fps", type=int, default=24)
    ap.add_argument("--keep", type=Path, default=None, help="keep the synthetic video at this path")
    args = ap.parse_args()

    from semgen_cli.io.video import iter_video
    from semgen_cli.metrics import WEIGHT_FREE
    from semgen_cli.metrics.pixel import PIXEL_METRICS
    from semgen_cli.steps.drift import measure_drift

    tmp = tempfile.TemporaryDirectory()
    path = args.keep or Path(tmp.name) / "bench_480p.mp4"
    t = time.perf_counter()
    n = synth(path, args.seconds, args.fps)
    print(f"synthesized {n} frames of 854×480 at {args.fps} fps ({args.seconds:g} s) in {time.perf_counter() - t:.1f} s")
    per_min = 60.0 / args.seconds

    t = time.perf_counter()
    count = sum(len(c) for c in iter_video(path, chunk=32))
    decode = time.perf_counter() - t
    assert count == n

    frames = next(iter_video(path, chunk=min(48, n)))  # (B, 480, 854, 3) held once for the per-metric timings
    per_metric = {}
    for name in WEIGHT_FREE:
        m = PIXEL_METRICS[name]()
        m.begin(len(frames))
        t = time.perf_counter()
        m.update(frames, 0)
        per_metric[name] = (time.perf_counter() - t) / len(frames) * n

    t = time.perf_counter()
    res = measure_drift([path], WEIGHT_FREE)
    total = time.perf_counter() - t
    assert not res.errors, res.errors

    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cpus={os.cpu_count()}")
    print(f"{'stage':<28} {'s per minute of 480p':>22}")
    print(f"{'decode only':<28} {decode * per_min:>22.1f}")
    for name, s in per_metric.items():
        print(f"{name:<28} {s * per_min:>22.1f}")
    print(f"{'measure_drift (all, total)':<28} {total * per_min:>22.1f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()

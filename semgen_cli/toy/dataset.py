"""The library side of `semgen toy-data`: render toy clips to mp4 with their captions.

Output folder (the HF imagefolder convention that `semgen extract` reads):
- `clip-000000.mp4` … H.264 at crf 0 in yuv444p (no chroma subsampling), so colours decode to
  within one level of the palette, object edges included;
- `toy_config.json`: the resolved settings, written first;
- `metadata.jsonl`: one line per clip, `file_name`, `text` (the caption) and the attributes,
  written last and atomically (temp + rename): a folder with it is complete.

Clip i is drawn from `numpy.random.default_rng([seed, i])`, so it does not depend on `count`
(a run with `--count 10` is the prefix of one with `--count 100`) and the same seed gives the same
frame bytes.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.io.shards import write_text_atomic
from semgen_cli.reporting import NULL, Reporter
from semgen_cli.toy.world import MAX_SIZE, ClipSpec, Combo, all_combos, render_iter, sample_spec

METADATA = "metadata.jsonl"
CONFIG = "toy_config.json"
CLIP_NAME = "clip-{:06d}.mp4"


MAX_COUNT, MAX_SECONDS, MAX_FPS, MAX_FRAME = 1_000_000, 3600.0, 240.0, 4096
"""Upper bounds of --count, --seconds / --long-seconds, --fps and --size: beyond them a toy data
set is a mistyped flag, not a data set (a 10^12-pixel frame, a year-long clip)."""


@dataclass(frozen=True)
class ToyDataConfig:
    """Settings of one `semgen toy-data` run; `__post_init__` rejects bad values naming the flag."""

    count: int = 100
    """Number of clips (--count)."""
    seconds: float = 4.0
    """Length of an ordinary clip in seconds (--seconds)."""
    seed: int = 0
    """Seed; clip i uses default_rng([seed, i]) (--seed)."""
    fps: float = 8.0
    """Frames per second (--fps)."""
    size: int = 64
    """Frame width and height in pixels; even, for H.264 yuv420p (--size)."""
    long_fraction: float = 0.0
    """Fraction of clips that are long, spread evenly over the indices (--long-fraction)."""
    long_seconds: float = 60.0
    """Length of a long clip in seconds (--long-seconds)."""
    exclude: tuple[Combo, ...] = field(default_factory=tuple)
    """(colour, shape, background) combinations never rendered (--exclude-combos)."""
    crf: int = 0
    """H.264 constant rate factor; 0 is lossless in YUV (--crf)."""

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_COUNT:
            raise ConfigError(f"--count must be from 1 to {MAX_COUNT}, got {self.count}")
        for flag, value, most in (("--seconds", self.seconds, MAX_SECONDS), ("--fps", self.fps, MAX_FPS), ("--long-seconds", self.long_seconds, MAX_SECONDS)):
            if not 0 < value <= most:  # NaN fails this too
                raise ConfigError(f"{flag} must be a positive number of at most {most:g}, got {value}")
        if round(self.seconds * self.fps) < 1:
            raise ConfigError(f"--seconds {self.seconds} at --fps {self.fps} gives no frames; use a longer clip")
        if round(self.long_seconds * self.fps) < 1:
            raise ConfigError(f"--long-seconds {self.long_seconds} at --fps {self.fps} gives no frames")
        if not 0.0 <= self.long_fraction <= 1.0:
            raise ConfigError(f"--long-fraction must be between 0 and 1, got {self.long_fraction}")
        if not 2 * MAX_SIZE <= self.size <= MAX_FRAME or self.size % 2:
            raise ConfigError(f"--size must be an even number of {2 * MAX_SIZE} to {MAX_FRAME} px, got {self.size}")
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"--crf must be between 0 and 51, got {self.crf}")
        if len(set(self.exclude)) >= len(all_combos()):
            raise ConfigError("--exclude-combos excludes every colour × shape × background; nothing left to render")

    def is_long(self, index: int) -> bool:
        """Clip `index` is long when the running count of long clips steps up at it, so exactly
        floor(count · fraction) of the first `count` clips are long, spread evenly."""
        p = self.long_fraction
        return math.floor((index + 1) * p + 1e-9) > math.floor(index * p + 1e-9)

    def spec(self, index: int) -> ClipSpec:
        """The clip at `index`: a pure function of (seed, index) and the settings."""
        rng = np.random.default_rng([self.seed, index])
        seconds = self.long_seconds if self.is_long(index) else self.seconds
        return sample_spec(rng, self.exclude, seconds=seconds, fps=self.fps, width=self.size, height=self.size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exclude"] = [":".join(c) for c in sorted(set(self.exclude))]
        return d


@dataclass
class ToyDataResult:
    """What a run wrote."""

    out: Path
    clips: int
    long_clips: int
    frames: int
    seconds: float
    metadata: Path
    elapsed: float


def metadata_record(file_name: str, spec: ClipSpec) -> dict:
    """One metadata.jsonl line: file name, caption and every attribute of the clip."""
    return {
        "file_name": file_name,
        "text": spec.caption,
        "colour": spec.colour,
        "shape": spec.shape,
        "background": spec.background,
        "motion": spec.motion,
        "size": spec.size,
        "speed": spec.speed,
        "x": spec.x,
        "y": spec.y,
        "seconds": spec.seconds,
        "fps": spec.fps,
        "frames": spec.num_frames,
        "width": spec.width,
        "height": spec.height,
    }


def _is_ours(name: str) -> bool:
    """Files toy-data writes, including the temp files a killed run leaves behind."""
    if name in (METADATA, CONFIG, f".{METADATA}.partial"):
        return True
    return name.lstrip(".").startswith("clip-") and name.endswith(".mp4")


def check_output(out: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise `InputError` unless `out` can take a toy-data output (missing, empty, or a previous
    toy-data output with `overwrite`)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; give a folder path for toy-data output")
    if out.is_dir() and any(out.iterdir()):
        ours = [p for p in out.iterdir() if _is_ours(p.name)]
        if not overwrite:
            raise InputError(f"{out}: folder is not empty; pick a new folder or pass --overwrite to replace a previous toy-data output")
        if len(ours) != sum(1 for _ in out.iterdir()):
            raise InputError(f"{out}: holds files that toy-data did not write; --overwrite only replaces a previous toy-data output")


def _prepare(out: Path, overwrite: bool) -> None:
    check_output(out, overwrite)
    if out.is_dir():
        for p in out.iterdir():  # only files this command writes (check_output made sure)
            if _is_ours(p.name):
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def write_toy_dataset(
    out: str | os.PathLike, config: ToyDataConfig, reporter: Reporter = NULL, overwrite: bool = False
) -> ToyDataResult:
    """Render `config.count` clips into `out` (see the module docstring for the layout)."""
    from semgen_cli.io.video import VideoWriter

    out = Path(out)
    _prepare(out, overwrite)
    t0 = time.perf_counter()
    (out / CONFIG).write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    records, frames, seconds, long_clips = [], 0, 0.0, 0
    reporter.start("render", total=config.count, unit="clips")
    for i in range(config.count):
        spec = config.spec(i)
        name = CLIP_NAME.format(i)
        meta = {"prompt": spec.caption, "toy": spec.to_dict()}
        with VideoWriter(out / name, fps=spec.fps, width=spec.width, height=spec.height, metadata=meta, crf=config.crf, pix_fmt="yuv444p") as writer:
            for chunk in render_iter(spec):
                writer.write(chunk)
        records.append(metadata_record(name, spec))
        frames += spec.num_frames
        seconds += spec.num_frames / spec.fps
        long_clips += config.is_long(i)
        reporter.advance("render", 1, seconds=round(seconds, 1))
    reporter.finish("render")

    # metadata.jsonl last and atomically: a folder that has it is complete.
    write_text_atomic(out / METADATA, "".join(json.dumps(rec) + "\n" for rec in records))
    return ToyDataResult(out, config.count, long_clips, frames, seconds, out / METADATA, time.perf_counter() - t0)

"""`semgen toy-data`: render toy-world clips and their captions (DESIGN §6)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from semgen_cli.cli.options import Defaults, keyword_default

D = Defaults("semgen_cli.toy.dataset", "ToyDataConfig")


def command(
    out: Annotated[Path, typer.Argument(help="Folder to write clip-000000.mp4 … and metadata.jsonl into.", show_default=False)],
    count: Annotated[int, typer.Option("--count", "-n", help="Number of clips.")] = D.count,
    seconds: Annotated[float, typer.Option("--seconds", help="Length of each clip in seconds.")] = D.seconds,
    seed: Annotated[int, typer.Option("--seed", help="Seed; the same seed gives the same frames.")] = D.seed,
    fps: Annotated[float, typer.Option("--fps", help="Frames per second.")] = D.fps,
    size: Annotated[int, typer.Option("--size", help="Frame width and height in pixels (even, at least 40).")] = D.size,
    long_fraction: Annotated[
        float, typer.Option("--long-fraction", help="Fraction of clips that are long (--long-seconds), spread evenly.")
    ] = D.long_fraction,
    long_seconds: Annotated[float, typer.Option("--long-seconds", help="Length of a long clip in seconds.")] = D.long_seconds,
    exclude_combos: Annotated[
        Optional[list[str]],
        typer.Option(
            "--exclude-combos",
            help="Hold out colour:shape:background combinations, comma-separated or repeated; * matches any "
            "(e.g. red:circle:navy,blue:*:gray).",
        ),
    ] = None,
    crf: Annotated[int, typer.Option("--crf", help="H.264 quality; 0 is lossless, so colours decode exactly.")] = D.crf,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous toy-data output in OUT.")] = keyword_default("semgen_cli.toy.dataset", "write_toy_dataset", "overwrite"),
) -> None:
    """Render toy-world clips (one coloured circle, square or triangle on a flat background, moving
    left/right/up/down with wrap-around or standing still) as mp4, with captions in metadata.jsonl.

    The same --seed gives the same frames. Long clips (--long-fraction, --long-seconds) keep the
    object's colour and shape for their whole length, so a model's drift on them is measurable.
    """
    from semgen_cli.cli._common import RichReporter, settings_table, summary
    from semgen_cli.toy.dataset import ToyDataConfig, check_output, write_toy_dataset
    from semgen_cli.toy.world import parse_combos

    exclude = tuple(sorted(parse_combos(exclude_combos or [])))
    config = ToyDataConfig(
        count=count, seconds=seconds, seed=seed, fps=fps, size=size,
        long_fraction=long_fraction, long_seconds=long_seconds, exclude=exclude, crf=crf,
    )  # fmt: skip
    check_output(out, overwrite)
    n_long = sum(config.is_long(i) for i in range(count))
    settings_table(
        "semgen toy-data",
        {
            "out": out,
            "clips": f"{count} ({n_long} long of {long_seconds:g} s)" if n_long else count,
            "seconds": seconds,
            "frames": f"{size}x{size} at {fps:g} fps",
            "seed": seed,
            "held out": f"{len(exclude)} combos" + (f": {', '.join(':'.join(c) for c in exclude[:6])}{' …' if len(exclude) > 6 else ''}" if exclude else ""),
            "encoding": f"H.264 yuv444p crf {crf}" + (" (lossless)" if crf == 0 else ""),
        },
    )
    with RichReporter() as reporter:
        result = write_toy_dataset(out, config, reporter=reporter, overwrite=overwrite)
    summary(
        "done",
        {
            "clips": f"{result.clips} in {result.out}/clip-*.mp4",
            "captions": result.metadata,
            "video": f"{result.seconds:.1f} s, {result.frames} frames",
            "time": f"{result.elapsed:.1f} s",
        },
        next_command=f"semgen extract {shlex.quote(str(out))} --out data/",
    )

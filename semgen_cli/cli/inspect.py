"""`semgen inspect`: a shard folder's index as a table; --verify rechecks every sha256."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    data: Annotated[Path, typer.Argument(help="Folder written by `semgen extract`, or a run folder (fit-compressor, train-latent, train-semantic).")],
    verify: Annotated[bool, typer.Option("--verify", help="Recompute every shard's sha256 and compare with the index.")] = False,
    samples: Annotated[int, typer.Option(help="Show the first N sample records.")] = 5,
) -> None:
    """Print what a shard folder holds: samples, seconds, field shapes, components and shards. Given a run folder (fit-compressor, train-latent, train-semantic), list its checkpoints; --verify rechecks every weight file's sha256."""
    from rich.markup import escape
    from rich.table import Table

    from semgen_cli.cli._common import console, printable, settings_table
    from semgen_cli.io.shards import Dataset

    if (data / "config.json").is_file() and not (data / "index.json").is_file():
        return _inspect_run(data, verify)
    ds = Dataset(data)
    idx = ds.index
    settings_table(f"semgen inspect {data}", {
        "samples": idx["total_samples"], "seconds of video": round(idx.get("total_seconds", 0.0), 2),
        "failed inputs": idx.get("failed", 0), "shards": len(ds.shards),
        "fps (VAE / semantic)": f"{idx['producer']['fps']:g} / {idx['producer']['semantic_fps']:g}",
        "size": idx["producer"]["size"], "dtype": idx["producer"]["dtype"],
    })
    table = Table(title="fields", title_justify="left")
    for col in ("field", "shape", "dtype"):
        table.add_column(col)
    for name, f in ds.fields.items():
        table.add_row(name, " × ".join(map(str, f["shape"])), f["dtype"])
    console.print(table)
    table = Table(title="components", title_justify="left")
    for col in ("role", "spec", "fingerprint"):
        table.add_column(col)
    for role, c in ds.components.items():
        table.add_row(role, escape(printable(c.get("spec"))), escape(printable(c.get("fingerprint"))))
    console.print(table)
    if samples > 0 and len(ds):
        table = Table(title=f"first {min(samples, len(ds))} samples", title_justify="left")
        for col in ("id", "seconds", "frames", "latent T", "semantic T", "caption"):
            table.add_column(col)
        for r in ds.records[:samples]:
            table.add_row(escape(printable(r["id"])), f"{r['duration']:.2f}", str(r["frames"]), str(r["latent_frames"]), str(r["semantic_tokens_t"]), escape(printable(r["caption"][:60])))
        console.print(table)
    if verify:
        _verify_shards(ds, data)


def _verify_shards(ds, data: Path) -> None:
    """Recompute every shard's sha256, show a table, and fail naming the folder if any differs."""
    from rich.markup import escape
    from rich.table import Table

    from semgen_cli.cli._common import console
    from semgen_cli.errors import InputError

    bad = 0
    table = Table(title="verify", title_justify="left")
    for col in ("shard", "samples", "bytes", "sha256"):
        table.add_column(col)
    for shard, problem in ds.verify():
        table.add_row(shard.name, str(shard.samples), str(shard.bytes), "[green]ok[/]" if problem is None else f"[red]{escape(problem)}[/]")
        bad += problem is not None
    console.print(table)
    if bad:
        raise InputError(f"{data}: {bad} of {len(ds.shards)} shard(s) failed verification")
    console.print(f"[green]all {len(ds.shards)} shard(s) match the index[/]")


def _inspect_run(run: Path, verify: bool) -> None:
    """A run folder: what made it, its checkpoints, and with --verify each weight file's hash."""
    from rich.markup import escape
    from rich.table import Table

    from semgen_cli.cli._common import console, settings_table
    from semgen_cli.errors import InputError
    from semgen_cli.io.shards import read_json
    from semgen_cli.runs import verify_run
    from semgen_cli.training import _valid_checkpoints

    cfg = read_json(run / "config.json", "run config")
    step = cfg.get("step") if isinstance(cfg, dict) else None
    if step not in ("fit-compressor", "train-latent", "train-semantic"):
        raise InputError(f"{run}: neither a data folder (no index.json) nor a training run (config.json step {step!r})")
    ckpts = _valid_checkpoints(run)
    settings_table(f"semgen inspect {run}", {
        "made by": f"semgen {step}", "data": (cfg.get("data") or {}).get("path", "?"),
        "checkpoints": ", ".join(p.name for _, p in ckpts) or "none",
    })
    if not verify:
        return
    table = Table(title="verify", title_justify="left")
    for col in ("file", "check"):
        table.add_column(col)
    bad = n = 0
    for file, ok, note in verify_run(run):
        n += 1
        bad += not ok
        table.add_row(escape(str(file.relative_to(run))), f"[green]{escape(note)}[/]" if ok else f"[red]{escape(note)}[/]")
    console.print(table)
    if bad:
        raise InputError(f"{run}: {bad} of {n} weight file(s) failed verification")
    console.print(f"[green]all {n} weight file(s) check out[/]")

"""`semgen merge`: fold a LoRA run's adapters into its base, writing a standalone run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    run: Annotated[Path, typer.Argument(help="train-latent or train-semantic run trained with --lora-rank.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New run folder to write (must not exist).")],
) -> None:
    """Merge the adapters of a LoRA run (its newest checkpoint, model and EMA weights) into its base, which is read from the path the run recorded and checked against its fingerprint.

    Writes OUT/config.json and OUT/checkpoints/step-N/ holding the whole DiT: a standalone run that `generate`, `train-semantic --latent-run` and `--init` read without the base (not resumable: it has no optimizer state).
    """
    from semgen_cli.cli._common import summary
    from semgen_cli.lora import merge_run

    result = merge_run(run, out)
    summary("semgen merge", {"run": run, "out": out, "checkpoint": result["checkpoint"], "files": ", ".join(result["files"])})

"""Copy a trained toy pipeline into semgen_cli/assets/ as the embedded default.

    python examples/toy/bundle.py runs/toy-default [semgen_cli/assets] [--latent NAME] [--semantic NAME]

`--latent`/`--semantic` name the run folders inside the training folder (default: `latent`,
`semantic`, as train_default.sh writes them), e.g. a stage 1 fine-tuned into `latent2` from the
`latent` that stage 2 was trained against. What is kept of each run, and what `pipeline.json`
(written last) records: `semgen_cli.pipeline_file.write_pipeline` and docs/formats.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from semgen_cli.errors import SemgenError
from semgen_cli.pipeline_file import write_pipeline


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", help="training folder (train_default.sh's WORKDIR)")
    ap.add_argument("assets", nargs="?", default="semgen_cli/assets")
    ap.add_argument("--latent", default="latent", help="train-latent run folder inside WORK")
    ap.add_argument("--semantic", default="semantic", help="train-semantic run folder inside WORK")
    a = ap.parse_args(argv)
    try:
        print(json.dumps(write_pipeline(a.work, a.assets, a.latent, a.semantic), indent=2))
    except SemgenError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()

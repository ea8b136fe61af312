"""Give the bundled toy pipeline another VAE decoder, keeping its encoder, so the bundled runs stay valid.

    python examples/toy/swap_decoder.py NEW_VAE_FOLDER [--assets semgen_cli/assets]

NEW_VAE_FOLDER comes from `train_vae.py --init semgen_cli/assets/toy/vae --freeze-encoder
[--decoder-base-dim N]`: the same encoder, so the same latents, and another decoder. What is
checked and rewritten: `semgen_cli.pipeline_file.swap_vae_decoder`. Running it again with the same
folder changes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from semgen_cli.errors import SemgenError
from semgen_cli.pipeline_file import ASSETS, swap_vae_decoder


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("new", type=Path, help="VAE folder (save_pretrained) with the bundled encoder and a new decoder")
    p.add_argument("--assets", type=Path, default=ASSETS)
    args = p.parse_args(argv)
    try:
        print(swap_vae_decoder(args.new, args.assets))
    except SemgenError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()

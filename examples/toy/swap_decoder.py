"""Give the bundled toy pipeline another VAE decoder, keeping its encoder, so the bundled runs stay valid.

    python examples/toy/swap_decoder.py NEW_VAE_FOLDER [--assets semgen_cli/assets]

NEW_VAE_FOLDER comes from `train_vae.py --init semgen_cli/assets/toy/vae --freeze-encoder
[--decoder-base-dim N]`: the same encoder, so the same latents, and another decoder (Stable
Diffusion's sd-vae-ft-mse replaced its decoder the same way, without retraining the generator).

1. Refuses unless NEW has the bundled VAE's encoder (`encoder_fingerprint`).
2. The bundled stage 1 (pipeline.json's `latent_run`) must record the bundled VAE (by fingerprint);
   its VAE entry gains `encoder_fingerprint`, which data extracted before semgen recorded it lacks
   and which is what lets `semgen generate` accept a VAE with another decoder. Written atomically.
   Stage 2 is not looked at: it never sees latents, so its data may come from any VAE (the rule
   `semgen generate` applies to a pair of runs).
3. NEW replaces ASSETS/toy/vae (copied beside it, then renamed into place), and pipeline.json is
   rewritten last with the new VAE's fingerprint.

Running it again with the same NEW changes nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from semgen_cli.components import load_vae  # noqa: E402
from semgen_cli.io.shards import read_json, write_json_atomic  # noqa: E402


def swap(new: Path, assets: Path) -> dict:
    """Steps 1–3 above; returns {"old": fingerprint, "new": fingerprint, "encoder": fingerprint}."""
    target = assets / "toy" / "vae"
    old_vae, new_vae = load_vae(f"wan:{target}"), load_vae(f"wan:{new}")
    enc = old_vae.encoder_fingerprint
    if new_vae.encoder_fingerprint != enc:
        raise SystemExit(f"{new}: its encoder {new_vae.encoder_fingerprint} is not the bundled VAE's {enc}; "
                         "only a decoder trained on the frozen bundled encoder (train_vae.py --freeze-encoder) keeps the runs valid")
    pipeline_path = assets / "pipeline.json"
    pipeline = read_json(pipeline_path)
    cfg_path = assets / pipeline["latent_run"] / "config.json"
    cfg = read_json(cfg_path)
    entry = cfg["data"]["components"]["vae"]
    if entry.get("encoder_fingerprint") != enc:
        if entry.get("fingerprint") != old_vae.fingerprint:
            raise SystemExit(f"{cfg_path}: trained on VAE {entry.get('fingerprint')}, not the bundled {old_vae.fingerprint}; "
                             "re-bundle the runs first (bundle.py)")
        entry["encoder_fingerprint"] = enc
        write_json_atomic(cfg_path, cfg)
    if new_vae.fingerprint != old_vae.fingerprint:
        staged, retired = target.with_name("vae.new"), target.with_name("vae.old")
        for leftover in (staged, retired):
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.copytree(new, staged, ignore=shutil.ignore_patterns("*.log"))
        target.rename(retired)
        staged.rename(target)
        shutil.rmtree(retired)
    pipeline["components"]["vae"]["fingerprint"] = new_vae.fingerprint
    pipeline["components"]["vae"]["encoder_fingerprint"] = enc
    pipeline["bundle_bytes"] = sum(p.stat().st_size for p in (assets / "toy").rglob("*") if p.is_file())
    write_json_atomic(pipeline_path, pipeline)
    return {"old": old_vae.fingerprint, "new": new_vae.fingerprint, "encoder": enc}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("new", type=Path, help="VAE folder (save_pretrained) with the bundled encoder and a new decoder")
    p.add_argument("--assets", type=Path, default=ROOT / "semgen_cli" / "assets")
    args = p.parse_args(argv)
    print(swap(args.new, args.assets))


if __name__ == "__main__":
    main()

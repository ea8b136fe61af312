"""Copy a trained toy pipeline into semgen_cli/assets/ as the embedded default.

    python examples/toy/bundle.py runs/toy-default [semgen_cli/assets] [--latent NAME] [--semantic NAME]

`--latent`/`--semantic` name the run folders inside the training folder (default: `latent`,
`semantic`, as train_default.sh writes them), e.g. a stage 1 fine-tuned into `latent2` from the
`latent` that stage 2 was trained against: the paths of both keep their names under WORKDIR.

From each run (latent, semantic) only what sampling needs is kept: config.json, the EMA weights
of the final checkpoint, its state.json (its `files` record narrowed to the EMA, hashed again) and
the `latest` pointer (no optimizer state); paths in
config.json under the training folder are written as `WORKDIR/...` (the training machine's
absolute paths mean nothing elsewhere, and nothing reads them to load the pipeline). Then
`pipeline.json` is written last, naming the runs, every component with its fingerprint, the
held-out combinations, the sizes and the bytes and sha256 of every weight file (`files`; generate
checks the sizes, `semgen inspect RUN --verify` the hashes), so `semgen generate` with no runs finds
the bundle and `semgen info` can say what it is. Its VAE is the one ASSETS/toy/vae holds: after a decoder swap
(swap_decoder.py) that is the new decoder, on the encoder stage 1's data came from.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from semgen_cli.io.shards import file_record, read_json, write_json_atomic
from semgen_cli.toy.prompts import HELD_OUT
from semgen_cli.training import latest_checkpoint

KEEP = ("ema.safetensors", "state.json")
LIMIT_MB = 40


def relative_paths(value, prefix: str):
    """`value` (parsed JSON) with every string under the folder `prefix` rewritten to WORKDIR/…."""
    if isinstance(value, dict):
        return {k: relative_paths(v, prefix) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v, prefix) for v in value]
    if isinstance(value, str) and (value == prefix or value.startswith(prefix + "/")):
        return "WORKDIR" + value[len(prefix):]
    return value


def copy_run(src: Path, dst: Path, work_dir: Path) -> None:
    ckpt = latest_checkpoint(src)
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "checkpoints" / ckpt.name).mkdir(parents=True)
    for name in KEEP:
        shutil.copy2(ckpt / name, dst / "checkpoints" / ckpt.name / name)
    bundled_state(dst / "checkpoints" / ckpt.name)
    write_json_atomic(dst / "config.json", relative_paths(read_json(src / "config.json"), str(work_dir.resolve())))
    (dst / "checkpoints" / "latest").write_text(ckpt.name + "\n")


def bundled_state(ckpt: Path) -> dict:
    """Rewrite the copied state.json so its `files` record names only the weight files kept
    (hashed again here); returns that record."""
    state = read_json(ckpt / "state.json")
    state["files"] = {name: file_record(ckpt / name) for name in KEEP if name.endswith(".safetensors")}
    write_json_atomic(ckpt / "state.json", state)
    return state["files"]


def bundle_files(assets_dir: Path, runs: tuple[str, ...]) -> dict:
    """pipeline.json's `files`: {path under ASSETS: {"bytes", "sha256"}} of each run's weights."""
    from semgen_cli.training import latest_checkpoint

    out = {}
    for run in runs:
        ckpt = latest_checkpoint(assets_dir / run)
        for name in KEEP:
            if name.endswith(".safetensors"):
                out[(ckpt / name).relative_to(assets_dir).as_posix()] = file_record(ckpt / name)
    return out


def loaded_vae(assets_dir: Path, recorded: dict) -> dict:
    """pipeline.json's VAE entry: the one stage 1's data recorded, unless ASSETS/toy/vae (what the
    `toy` spec loads) is another decoder on the same encoder (swap_decoder.py), then its fingerprint."""
    folder = assets_dir / "toy" / "vae"
    if recorded.get("spec") != "toy" or not (folder / "config.json").is_file():
        return recorded
    from semgen_cli.components import load_vae

    vae = load_vae(f"wan:{folder}")
    if vae.fingerprint == recorded.get("fingerprint"):
        return recorded
    if vae.encoder_fingerprint != recorded.get("encoder_fingerprint"):
        raise SystemExit(f"{folder}: its encoder {vae.encoder_fingerprint} did not make stage 1's latents "
                         f"({recorded.get('encoder_fingerprint') or recorded.get('fingerprint')}); extract and train on this VAE first")
    return {**recorded, "fingerprint": vae.fingerprint}


def main(work: str, assets: str = "semgen_cli/assets", latent: str = "latent", semantic: str = "semantic") -> None:
    work_dir, assets_dir = Path(work), Path(assets)
    runs = assets_dir / "toy" / "runs"
    # checked before anything is copied: a refused VAE leaves the bundle as it was
    vae = loaded_vae(assets_dir, read_json(work_dir / latent / "config.json")["data"]["components"]["vae"])
    copy_run(work_dir / latent, runs / "latent", work_dir)
    copy_run(work_dir / semantic, runs / "semantic", work_dir)
    lat = read_json(runs / "latent" / "config.json")
    sem = read_json(runs / "semantic" / "config.json")
    size = sum(p.stat().st_size for p in (assets_dir / "toy").rglob("*") if p.is_file())
    pipeline = {
        "name": "toy",
        "description": "SemanticGen trained on semgen's toy world by examples/toy/train_default.sh",
        "latent_run": "toy/runs/latent",
        "semantic_run": "toy/runs/semantic",
        "components": {role: {k: c[k] for k in ("spec", "class", "fingerprint", "encoder_fingerprint") if k in c}
                       for role, c in {**lat["data"]["components"], "vae": vae}.items()},
        "compressor_fingerprint": sem["latent_run"]["compressor_fingerprint"],
        "latent_dit": {"preset": lat["settings"]["preset"], "attention": lat["settings"]["attention"], "window": lat["settings"]["window"]},
        "semantic_dit": {"preset": sem["settings"]["preset"]},
        "fps": lat["data"]["producer"]["fps"],
        "size": lat["data"]["producer"]["size"],
        "max_seconds": sem["max_seconds"],
        "held_out_combinations": [list(c) for c in HELD_OUT],
        "training_samples": lat["data"]["samples"],
        "bundle_bytes": size,
        "files": bundle_files(assets_dir, ("toy/runs/latent", "toy/runs/semantic")),
    }
    if size > LIMIT_MB * 2**20:
        raise SystemExit(f"bundle is {size / 2**20:.1f} MB, over the {LIMIT_MB} MB limit")
    write_json_atomic(assets_dir / "pipeline.json", pipeline)
    print(json.dumps(pipeline, indent=2))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Copy a trained toy pipeline into semgen_cli/assets/ as the embedded default.")
    ap.add_argument("work", help="training folder (train_default.sh's WORKDIR)")
    ap.add_argument("assets", nargs="?", default="semgen_cli/assets")
    ap.add_argument("--latent", default="latent", help="train-latent run folder inside WORK")
    ap.add_argument("--semantic", default="semantic", help="train-semantic run folder inside WORK")
    a = ap.parse_args()
    main(a.work, a.assets, a.latent, a.semantic)

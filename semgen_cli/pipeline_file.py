"""`pipeline.json`: the file that names a trained pipeline (a latent run and a semantic run), with
its reader (what `semgen generate`, `toy-eval` and `info` use to find the embedded default) and its
writers (what `examples/toy/bundle.py` and `examples/toy/swap_decoder.py` call to make the bundle).

The file (docs/formats.md) holds ``{"latent_run": PATH, "semantic_run": PATH}``, paths relative to
the file's folder, and for the bundle also its name, every component with its fingerprint, the
held-out combinations, the sizes, and ``files``: the bytes and sha256 of every weight file (the
reader checks the sizes; `semgen inspect RUN --verify` the hashes). It is always written last, so
a bundle whose pipeline.json exists is complete.

A bundle keeps of each run only what sampling needs: config.json, the EMA weights of the final
checkpoint, its state.json (its ``files`` record narrowed to the EMA, hashed again) and the
``latest`` pointer; paths in config.json under the training folder are written as ``WORKDIR/...``
(the training machine's absolute paths mean nothing elsewhere, and nothing reads them to load the
pipeline).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from semgen_cli.errors import ConfigError, InputError, MismatchError
from semgen_cli.io.shards import check_file_record, file_record, read_json, write_json_atomic

ASSETS = Path(__file__).resolve().parent / "assets"
KEEP = ("ema.safetensors", "state.json")
"""What a bundled run keeps of its final checkpoint."""
LIMIT_MB = 40
"""The largest bundle `write_pipeline` accepts (it ships inside the package)."""


def default_pipeline(path: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The runs a pipeline file names: ``{"latent_run": PATH, "semantic_run": PATH}``, paths
    relative to the file's folder. Default: the bundled embedded default,
    ``semgen_cli/assets/pipeline.json``."""
    if path is None:
        path, what, fix = ASSETS / "pipeline.json", "bundled pipeline file", "reinstall semgen"
        if not path.is_file():
            raise ConfigError(
                "no bundled default pipeline in this install yet (semgen_cli/assets/pipeline.json); "
                "pass --latent-run and --semantic-run"
            )
    else:
        path, what, fix = Path(path), "pipeline file", "write it with examples/toy/bundle.py"
        if not path.is_file():
            raise InputError(f"--pipeline {path}: no such file (give a pipeline.json written by examples/toy/bundle.py)")
    d = read_json(path, what)
    try:
        runs = (path.parent / d["latent_run"]).resolve(), (path.parent / d["semantic_run"]).resolve()
    except (KeyError, TypeError):
        raise InputError(f"{path}: expected {{\"latent_run\": PATH, \"semantic_run\": PATH}}; {fix}") from None
    for rel, rec in (d.get("files") or {}).items():  # sizes only (cheap); `semgen inspect RUN --verify` hashes
        check_file_record(path.parent / rel, rec, hashes=False)
    return runs


# ----------------------------------------------------------------------------- writing a bundle


def relative_paths(value, prefix: str):
    """`value` (parsed JSON) with every string under the folder `prefix` rewritten to WORKDIR/…."""
    if isinstance(value, dict):
        return {k: relative_paths(v, prefix) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v, prefix) for v in value]
    if isinstance(value, str) and (value == prefix or value.startswith(prefix + "/")):
        return "WORKDIR" + value[len(prefix):]
    return value


def _copy_run(src: Path, dst: Path, work_dir: Path) -> None:
    """The final checkpoint's EMA weights, its state.json, config.json and the pointer of `src`, into `dst`."""
    from semgen_cli.training import latest_checkpoint

    ckpt = latest_checkpoint(src)
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "checkpoints" / ckpt.name).mkdir(parents=True)
    for name in KEEP:
        shutil.copy2(ckpt / name, dst / "checkpoints" / ckpt.name / name)
    _narrow_state(dst / "checkpoints" / ckpt.name)
    write_json_atomic(dst / "config.json", relative_paths(read_json(src / "config.json"), str(work_dir.resolve())))
    (dst / "checkpoints" / "latest").write_text(ckpt.name + "\n")


def _narrow_state(ckpt: Path) -> dict:
    """Rewrite the copied state.json so its `files` record names only the weight files kept
    (hashed again here); returns that record."""
    state = read_json(ckpt / "state.json")
    state["files"] = {name: file_record(ckpt / name) for name in KEEP if name.endswith(".safetensors")}
    write_json_atomic(ckpt / "state.json", state)
    return state["files"]


def _weight_files(assets_dir: Path, runs: tuple[str, ...]) -> dict:
    """pipeline.json's `files`: {path under ASSETS: {"bytes", "sha256"}} of each run's weights."""
    from semgen_cli.training import latest_checkpoint

    out = {}
    for run in runs:
        ckpt = latest_checkpoint(assets_dir / run)
        for name in KEEP:
            if name.endswith(".safetensors"):
                out[(ckpt / name).relative_to(assets_dir).as_posix()] = file_record(ckpt / name)
    return out


def _loaded_vae(assets_dir: Path, recorded: dict) -> dict:
    """pipeline.json's VAE entry: the one stage 1's data recorded, unless ASSETS/toy/vae (what the
    `toy` spec loads) is another decoder on the same encoder (`swap_vae_decoder`), then its fingerprint."""
    folder = assets_dir / "toy" / "vae"
    if recorded.get("spec") != "toy" or not (folder / "config.json").is_file():
        return recorded
    from semgen_cli.components import load_vae

    vae = load_vae(f"wan:{folder}")
    if vae.fingerprint == recorded.get("fingerprint"):
        return recorded
    if vae.encoder_fingerprint != recorded.get("encoder_fingerprint"):
        raise MismatchError(f"{folder}: its encoder {vae.encoder_fingerprint} did not make stage 1's latents "
                            f"({recorded.get('encoder_fingerprint') or recorded.get('fingerprint')}); extract and train on this VAE first")
    return {**recorded, "fingerprint": vae.fingerprint}


def write_pipeline(work: str | os.PathLike, assets: str | os.PathLike = ASSETS, latent: str = "latent",
                   semantic: str = "semantic") -> dict:
    """Copy the runs `work/latent` and `work/semantic` into `assets/toy/runs/` and write
    `assets/pipeline.json` last; returns what it wrote. Its VAE is the one `assets/toy/vae` holds:
    after a decoder swap that is the new decoder, on the encoder stage 1's data came from."""
    from semgen_cli.toy.prompts import HELD_OUT

    work_dir, assets_dir = Path(work), Path(assets)
    runs = assets_dir / "toy" / "runs"
    # checked before anything is copied: a refused VAE leaves the bundle as it was
    vae = _loaded_vae(assets_dir, read_json(work_dir / latent / "config.json", "latent run config")["data"]["components"]["vae"])
    _copy_run(work_dir / latent, runs / "latent", work_dir)
    _copy_run(work_dir / semantic, runs / "semantic", work_dir)
    lat = read_json(runs / "latent" / "config.json")
    sem = read_json(runs / "semantic" / "config.json")
    size = sum(p.stat().st_size for p in (assets_dir / "toy").rglob("*") if p.is_file())
    if size > LIMIT_MB * 2**20:
        raise ConfigError(f"{assets_dir / 'toy'}: the bundle is {size / 2**20:.1f} MB, over the {LIMIT_MB} MB limit; "
                          "bundle smaller runs")
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
        "files": _weight_files(assets_dir, ("toy/runs/latent", "toy/runs/semantic")),
    }
    write_json_atomic(assets_dir / "pipeline.json", pipeline)
    return pipeline


def swap_vae_decoder(new: str | os.PathLike, assets: str | os.PathLike = ASSETS) -> dict:
    """Give the bundle at `assets` the VAE folder `new`: the bundled VAE's encoder with another
    decoder, so the bundled runs stay valid (Stable Diffusion's sd-vae-ft-mse replaced its decoder
    the same way, without retraining the generator). Returns {"old", "new", "encoder"} fingerprints.

    1. Refuses unless `new` has the bundled VAE's encoder (`encoder_fingerprint`).
    2. The bundled stage 1 (pipeline.json's `latent_run`) must record the bundled VAE (by
       fingerprint); its VAE entry gains `encoder_fingerprint`, which data extracted before semgen
       recorded it lacks and which is what lets `semgen generate` accept a VAE with another decoder.
       Stage 2 is not looked at: it never sees latents (the rule `semgen generate` applies to a pair).
    3. `new` replaces ASSETS/toy/vae (copied beside it, then renamed into place), and pipeline.json
       is rewritten last with the new VAE's fingerprint.

    Running it again with the same `new` changes nothing."""
    from semgen_cli.components import load_vae

    new, assets = Path(new), Path(assets)
    target = assets / "toy" / "vae"
    old_vae, new_vae = load_vae(f"wan:{target}"), load_vae(f"wan:{new}")
    enc = old_vae.encoder_fingerprint
    if new_vae.encoder_fingerprint != enc:
        raise MismatchError(f"{new}: its encoder {new_vae.encoder_fingerprint} is not the bundled VAE's {enc}; only a decoder "
                            "trained on the frozen bundled encoder (train_vae.py --freeze-encoder) keeps the runs valid")
    pipeline_path = assets / "pipeline.json"
    pipeline = read_json(pipeline_path, "pipeline file")
    cfg_path = assets / pipeline["latent_run"] / "config.json"
    cfg = read_json(cfg_path, "latent run config")
    entry = cfg["data"]["components"]["vae"]
    if entry.get("encoder_fingerprint") != enc:
        if entry.get("fingerprint") != old_vae.fingerprint:
            raise MismatchError(f"{cfg_path}: trained on VAE {entry.get('fingerprint')}, not the bundled {old_vae.fingerprint}; "
                                "re-bundle the runs first (examples/toy/bundle.py)")
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


__all__ = ["ASSETS", "default_pipeline", "relative_paths", "swap_vae_decoder", "write_pipeline"]

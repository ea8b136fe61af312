"""`semgen info`: versions, devices, and the bundled default pipeline in use."""

from __future__ import annotations


def command() -> None:
    """Print semgen's version, torch and its devices, and which pipeline `semgen generate` uses by default (with its components' fingerprints)."""
    import platform

    import torch

    from semgen_cli import __version__
    from semgen_cli.cli._common import settings_table
    from semgen_cli.errors import SemgenError

    rows = {"semgen": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"}
    try:
        from semgen_cli.io.shards import read_json
        from semgen_cli.pipeline_file import ASSETS, default_pipeline

        latent, semantic = default_pipeline()
        bundle = read_json(ASSETS / "pipeline.json")
        rows["default pipeline"] = f"{bundle.get('name', '?')} ({ASSETS / 'pipeline.json'})"
        if bundle.get("held_out_combinations"):
            rows["  held out"] = ", ".join(" ".join(c) for c in bundle["held_out_combinations"])
        cfg = read_json(latent / "config.json")
        data = cfg["data"]["components"]  # what stage 1's data was extracted with
        for role, c in (bundle.get("components") or data).items():  # what loads
            rows[f"  {role}"] = f"{c.get('spec')}  {c.get('fingerprint')}"
            trained = data.get(role, {}).get("fingerprint")
            if trained and trained != c.get("fingerprint"):
                rows[f"  {role}"] += (f"  (another decoder on the encoder of {trained}, which made stage 1's latents)"
                                      if role == "vae" else f"  (stage 1 was trained with {trained})")
        rows["  latent run"] = f"{latent.name}: {cfg['settings']['preset']} DiT, {cfg['settings']['attention']} attention"
        rows["  semantic run"] = semantic.name
    except SemgenError as err:
        rows["default pipeline"] = str(err)
    settings_table("semgen info", rows)

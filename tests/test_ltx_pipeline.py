"""A pipeline on an LTX-Video VAE (temporal stride 8, where the Wan-style VAEs have 4) runs end to
end: extract, fit-compressor, train-latent, train-semantic, generate. Every step reads the
stride from the data's record (`semgen_cli.geometry.ClipGeometry`), so the training window and
the semantic tokens' times follow the VAE."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_inproc


@pytest.mark.slow
def test_tiny_ltx_vae_pipeline_end_to_end(tmp_path):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    diffusers.AutoencoderKLLTXVideo(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 5, decoder_inject_noise=(False,) * 5,
    ).save_pretrained(tmp_path / "ltx")
    T = tmp_path
    steps = [
        ("toy-data", str(T / "lv"), "--count", "4", "--seconds", "6", "--seed", "4"),
        ("extract", str(T / "lv"), "--out", str(T / "ld"), "--vae", f"ltx:{T / 'ltx'}", "--semantic", "tiny", "--text", "tiny", "--fps", "8"),
        ("fit-compressor", str(T / "ld"), "--dim", "8", "--steps", "10", "--out", str(T / "lc")),
        ("train-latent", str(T / "ld"), "--compressor", str(T / "lc"), "--preset", "tiny", "--batch-size", "2", "--steps", "2", "--out", str(T / "ll")),
        ("train-semantic", str(T / "ld"), "--latent-run", str(T / "ll"), "--preset", "tiny", "--batch-size", "2", "--steps", "2", "--out", str(T / "ls")),
        ("generate", "a red circle moving left on a black background", "--latent-run", str(T / "ll"), "--semantic-run", str(T / "ls"),
         "--seconds", "4", "--steps", "2", "--out", str(T / "l.mp4")),
    ]
    for args in steps:
        r = run_inproc(*args)
        assert r.returncode == 0, f"{args[0]}: {r.stderr[-500:]}"
    lat = json.loads((T / "ll" / "config.json").read_text())
    assert lat["data"]["components"]["vae"]["temporal_stride"] == 8
    # the training window counts latent frames at the VAE's stride 8: 1 + ceil((frames - 1) / 8)
    assert lat["window"]["latents"] == 1 + -(-(round(lat["window"]["seconds"] * 8) - 1) // 8)
    from semgen_cli.io.video import probe

    assert probe(T / "l.mp4").frames == 32  # 4 s at 8 fps

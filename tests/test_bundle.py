"""The embedded default (semgen_cli/assets/pipeline.json + assets/toy/): what it names is what
loads, it fits the size limit, and `semgen generate` with no runs produces a video the pixel judge
recognises — so a regression in the VAE, either generator, the compressor or the sampler shows up
in CI. Thresholds are the values measured on the committed bundle minus a margin
(examples/toy/README.md, "Bundle")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semgen_cli.io.shards import read_json
from semgen_cli.steps.generate import GenerateConfig
from tests.conftest import run_cli, run_inproc

ASSETS = Path(__file__).resolve().parents[1] / "semgen_cli" / "assets"
PIPELINE = ASSETS / "pipeline.json"

PROMPT = "a red circle moving right on a navy background"  # README's prompt, a trained combination
MIN_BACKGROUND = 0.9  # measured 1.0 (4 s, seed 0)
MIN_COLOUR = 0.8  # measured 1.0 (4 s, seed 0); 0.72 with the previous bundle


def test_bundle_is_committed_and_small():
    assert PIPELINE.is_file(), "semgen_cli/assets/pipeline.json is missing: run examples/toy/train_default.sh"
    p = read_json(PIPELINE)
    total = sum(f.stat().st_size for f in (ASSETS / "toy").rglob("*") if f.is_file())
    assert total <= 40 * 2**20
    assert set(p["components"]) == {"vae", "semantic", "text"}
    for role in ("latent_run", "semantic_run"):
        assert (ASSETS / p[role] / "config.json").is_file()
        assert (ASSETS / p[role] / "checkpoints" / "latest").is_file()


def test_bundle_component_fingerprints_match_what_loads():
    """pipeline.json's fingerprints are those of the folders `toy` resolves to today."""
    from semgen_cli.components import load_semantic_encoder, load_vae

    p = read_json(PIPELINE)
    vae = load_vae(p["components"]["vae"]["spec"])
    assert vae.fingerprint == p["components"]["vae"]["fingerprint"]
    assert p["components"]["vae"].get("encoder_fingerprint", vae.encoder_fingerprint) == vae.encoder_fingerprint
    sem = load_semantic_encoder(p["components"]["semantic"]["spec"], fps=1.6)
    assert sem.fingerprint == p["components"]["semantic"]["fingerprint"]


def test_info_names_the_bundle():
    r = run_inproc("info")
    assert r.returncode == 0, r.stderr
    assert "toy" in r.stdout and "pipeline.json" in r.stdout
    p = read_json(PIPELINE)
    for c in p["components"].values():  # the fingerprints of what loads, not of what the data came from
        assert c["fingerprint"] in r.stdout


@pytest.mark.slow
def test_generate_on_the_bundle_is_judged_right(tmp_path):
    from semgen_cli.toy.judge import judge_video

    out = tmp_path / "out.mp4"
    r = run_cli("generate", PROMPT, "--seconds", "4", "--out", out, "--seed", "0")
    assert r.returncode == 0, r.stderr
    assert "toy" in r.stdout  # the summary names the pipeline in use
    res = judge_video(out, PROMPT)
    assert res.frames == 32
    assert res.accuracy["background"] >= MIN_BACKGROUND, json.dumps(res.accuracy)
    assert res.accuracy["colour"] >= MIN_COLOUR, json.dumps(res.accuracy)
    settings = json.loads(out.with_suffix(".json").read_text())["settings"]  # the flags' defaults are GenerateConfig's
    assert (settings["semantic_cfg"], settings["latent_cfg"]) == (GenerateConfig.semantic_cfg, GenerateConfig.latent_cfg)
    assert (settings["semantic_steps"], settings["latent_steps"]) == (GenerateConfig.semantic_steps, GenerateConfig.latent_steps)

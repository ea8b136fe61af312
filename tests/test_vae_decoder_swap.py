"""A VAE whose decoder differs but whose encoder is the runs' own decodes their latents:
`encoder_fingerprint` ignores the decoder, `generate --vae` / `toy-eval --vae` accept such a VAE
and refuse any other with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from semgen_cli.components import load_vae
from semgen_cli.components.vae import TINY_WAN_CONFIG
from semgen_cli.errors import MismatchError
from semgen_cli.pipeline_file import swap_vae_decoder, write_pipeline
from semgen_cli.steps.generate import GenerateConfig, generate
from tests.conftest import run_inproc

PROMPT = "a red circle moving left on a black background"


def _tiny_module(seed: int = 0, **overrides):
    import diffusers
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return diffusers.AutoencoderKLWan(**{**TINY_WAN_CONFIG, **overrides})


def _with_new_decoder(folder: Path, encoder_source, decoder_base_dim: int, seed: int = 5) -> Path:
    """Save a VAE with `encoder_source`'s encoder (and quant convs) and a fresh decoder of another width."""
    module = _tiny_module(seed, decoder_base_dim=decoder_base_dim)
    for name in ("encoder", "quant_conv", "post_quant_conv"):
        getattr(module, name).load_state_dict(getattr(encoder_source, name).state_dict())
    module.save_pretrained(folder, safe_serialization=True)
    return folder


def test_encoder_fingerprint_ignores_the_decoder_only(tmp_path):
    base = _tiny_module(0)
    base.save_pretrained(tmp_path / "a", safe_serialization=True)
    _with_new_decoder(tmp_path / "b", base, decoder_base_dim=12)
    _tiny_module(1).save_pretrained(tmp_path / "c", safe_serialization=True)  # another encoder
    a, b, c = (load_vae(f"wan:{tmp_path / n}") for n in "abc")
    assert a.fingerprint != b.fingerprint
    assert a.encoder_fingerprint == b.encoder_fingerprint != c.encoder_fingerprint
    assert a.describe()["encoder_fingerprint"] == a.encoder_fingerprint
    # the latents really are the same
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(a.encode(frames).numpy(), b.encode(frames).numpy())


def test_extract_records_the_encoder_fingerprint(runs):
    recorded = json.loads((runs / "lat" / "config.json").read_text())["data"]["components"]["vae"]
    assert recorded["encoder_fingerprint"] == load_vae("tiny").encoder_fingerprint


def _cfg(runs: Path, out: Path, **kw) -> GenerateConfig:
    return GenerateConfig(prompts=[PROMPT], out=str(out), latent_run=str(runs / "lat"), semantic_run=str(runs / "sem"),
                          semantic_steps=2, latent_steps=2, seed=7, seconds=1.0, **kw)


def test_generate_decodes_with_a_new_decoder_and_records_it(runs, tmp_path):
    from semgen_cli.io.video import read_video

    tiny = load_vae("tiny")
    wide = _with_new_decoder(tmp_path / "wide", tiny.module, decoder_base_dim=12)
    own = generate(_cfg(runs, tmp_path / "own.mp4")).videos[0]
    new = generate(_cfg(runs, tmp_path / "new.mp4", vae=f"wan:{wide}")).videos[0]
    assert read_video(own.path).shape == read_video(new.path).shape
    assert not np.array_equal(read_video(own.path), read_video(new.path))  # another decoder drew it
    meta = json.loads(new.sidecar.read_text())
    assert meta["components"]["vae"] == load_vae(f"wan:{wide}").fingerprint != tiny.fingerprint
    assert meta["settings"]["vae"] == f"wan:{wide}"


def test_cli_summary_names_the_vae_that_decoded(runs, tmp_path):
    """The settings table names what the runs were trained on; the summary after loading names the
    VAE that decoded, here a new decoder on the runs' encoder."""
    tiny = load_vae("tiny")
    wide = _with_new_decoder(tmp_path / "wide", tiny.module, decoder_base_dim=12)
    res = run_inproc("generate", PROMPT, "--seconds", "1", "--steps", "2", "--latent-run", str(runs / "lat"),
                     "--semantic-run", str(runs / "sem"), "--vae", f"wan:{wide}", "--out", str(tmp_path / "o.mp4"))
    assert res.returncode == 0, res.stderr
    at = res.stdout.rindex("  components ")  # the summary's row; the settings table's is "trained on"
    settings, summary = ("".join(part.split()) for part in (res.stdout[:at], res.stdout[at:]))  # rich wraps long values
    new_fp = load_vae(f"wan:{wide}").fingerprint
    assert tiny.fingerprint in settings and new_fp not in settings
    assert new_fp in summary


def test_generate_refuses_a_vae_with_another_encoder(runs, tmp_path):
    _tiny_module(1).save_pretrained(tmp_path / "other", safe_serialization=True)
    with pytest.raises(MismatchError, match="only a VAE with the runs' encoder"):
        generate(_cfg(runs, tmp_path / "o.mp4", vae=f"wan:{tmp_path / 'other'}"))
    assert not (tmp_path / "o.mp4").exists()


def test_runs_without_a_recorded_encoder_fingerprint_accept_only_their_own_vae(runs, tmp_path):
    """Data extracted before semgen recorded encoder fingerprints: a new decoder is refused, and says why."""
    copied = tmp_path / "runs"
    for name in ("lat", "sem"):
        shutil.copytree(runs / name, copied / name)
        path = copied / name / "config.json"
        c = json.loads(path.read_text())
        del c["data"]["components"]["vae"]["encoder_fingerprint"]
        path.write_text(json.dumps(c))
    wide = _with_new_decoder(tmp_path / "wide", load_vae("tiny").module, decoder_base_dim=12)
    with pytest.raises(MismatchError, match="no encoder fingerprint recorded"):
        generate(_cfg(copied, tmp_path / "o.mp4", vae=f"wan:{wide}"))
    assert generate(_cfg(copied, tmp_path / "own.mp4")).videos[0].path.exists()


def test_cli_vae_flag_error_is_one_line(runs, tmp_path):
    _tiny_module(1).save_pretrained(tmp_path / "other", safe_serialization=True)
    res = run_inproc("generate", PROMPT, "--seconds", "1", "--steps", "2", "--latent-run", str(runs / "lat"),
              "--semantic-run", str(runs / "sem"), "--vae", f"wan:{tmp_path / 'other'}", "--out", str(tmp_path / "o.mp4"))
    assert res.returncode != 0
    assert "only a VAE with the runs' encoder" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.mp4").exists()


def test_toy_eval_passes_vae_through(runs, tmp_path):
    from semgen_cli.steps.toy_eval import ToyEvalConfig, toy_eval

    _tiny_module(1).save_pretrained(tmp_path / "other", safe_serialization=True)
    cfg = ToyEvalConfig(prompts=[PROMPT], seconds=1.0, latent_run=str(runs / "lat"), semantic_run=str(runs / "sem"),
                        steps=2, vae=f"wan:{tmp_path / 'other'}")
    with pytest.raises(MismatchError, match="only a VAE with the runs' encoder"):
        toy_eval(cfg)


def _bundle(runs: Path, root: Path) -> Path:
    """A bundle-shaped folder: toy/vae, toy/runs/{latent,semantic} recording that VAE the old way
    (no encoder fingerprint), pipeline.json."""
    assets = root / "assets"
    base = _tiny_module(0)
    base.save_pretrained(assets / "toy" / "vae", safe_serialization=True)
    fp = load_vae(f"wan:{assets / 'toy' / 'vae'}").fingerprint
    for src, dst in (("lat", "latent"), ("sem", "semantic")):
        shutil.copytree(runs / src, assets / "toy" / "runs" / dst)
        path = assets / "toy" / "runs" / dst / "config.json"
        c = json.loads(path.read_text())
        c["data"]["components"]["vae"] = {"spec": "toy", "fingerprint": fp}
        path.write_text(json.dumps(c))
    (assets / "pipeline.json").write_text(json.dumps({"name": "toy", "latent_run": "toy/runs/latent", "semantic_run": "toy/runs/semantic",
                                                      "components": {"vae": {"spec": "toy", "fingerprint": fp}}}))
    return assets


def test_swap_decoder_replaces_the_bundled_decoder_and_records_the_encoder(runs, tmp_path):
    assets = _bundle(runs, tmp_path)
    old = load_vae(f"wan:{assets / 'toy' / 'vae'}")
    wide = _with_new_decoder(tmp_path / "wide", old.module, decoder_base_dim=12)
    out = swap_vae_decoder(wide, assets)
    now = load_vae(f"wan:{assets / 'toy' / 'vae'}")
    assert out == {"old": old.fingerprint, "new": now.fingerprint, "encoder": old.encoder_fingerprint}
    assert now.fingerprint == load_vae(f"wan:{wide}").fingerprint != old.fingerprint
    entry = json.loads((assets / "toy" / "runs" / "latent" / "config.json").read_text())["data"]["components"]["vae"]
    assert entry == {"spec": "toy", "fingerprint": old.fingerprint, "encoder_fingerprint": old.encoder_fingerprint}
    entry = json.loads((assets / "toy" / "runs" / "semantic" / "config.json").read_text())["data"]["components"]["vae"]
    assert entry == {"spec": "toy", "fingerprint": old.fingerprint}  # stage 2 never sees latents: left as it was
    pipeline = json.loads((assets / "pipeline.json").read_text())
    assert pipeline["components"]["vae"]["fingerprint"] == now.fingerprint
    assert not (assets / "toy" / "vae.new").exists() and not (assets / "toy" / "vae.old").exists()
    before = {p: p.read_bytes() for p in assets.rglob("*.json")}
    swap_vae_decoder(wide, assets)  # again: nothing changes
    assert {p: p.read_bytes() for p in assets.rglob("*.json")} == before


def test_swap_decoder_refuses_another_encoder_and_changes_nothing(runs, tmp_path):
    assets = _bundle(runs, tmp_path)
    before = {p: p.read_bytes() for p in assets.rglob("*") if p.is_file()}
    _tiny_module(1).save_pretrained(tmp_path / "other", safe_serialization=True)
    with pytest.raises(MismatchError, match="is not the bundled VAE's"):
        swap_vae_decoder(tmp_path / "other", assets)
    assert {p: p.read_bytes() for p in assets.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("run", ["semantic", "latent"])
def test_swap_decoder_checks_only_stage_1s_vae(runs, tmp_path, run):
    """A stage 1 trained on another VAE's latents is refused (re-bundle first); a stage 2 is not
    looked at: it never sees latents, as `semgen generate` allows."""
    assets = _bundle(runs, tmp_path)
    path = assets / "toy" / "runs" / run / "config.json"
    c = json.loads(path.read_text())
    c["data"]["components"]["vae"]["fingerprint"] = "wan:000000000000"
    path.write_text(json.dumps(c))
    before = path.read_bytes()
    wide = _with_new_decoder(tmp_path / "wide", load_vae(f"wan:{assets / 'toy' / 'vae'}").module, decoder_base_dim=12)
    if run == "latent":
        with pytest.raises(MismatchError, match="re-bundle"):
            swap_vae_decoder(wide, assets)
    else:
        swap_vae_decoder(wide, assets)
    swapped = load_vae(f"wan:{assets / 'toy' / 'vae'}").fingerprint == load_vae(f"wan:{wide}").fingerprint
    assert swapped == (run == "semantic") and path.read_bytes() == before


@pytest.mark.parametrize("encoder", ["same", "other"])
def test_bundle_records_the_vae_that_loads(runs, tmp_path, encoder):
    """Re-bundling after a decoder swap: pipeline.json names the swapped-in VAE (what `toy` loads),
    not the one stage 1's data recorded; a VAE with another encoder is refused, pipeline.json unwritten."""
    base = _tiny_module(0)
    base.save_pretrained(tmp_path / "base", safe_serialization=True)
    old = load_vae(f"wan:{tmp_path / 'base'}")
    work = tmp_path / "work"
    for src, dst in (("lat", "latent"), ("sem", "semantic")):
        shutil.copytree(runs / src, work / dst)
        path = work / dst / "config.json"
        c = json.loads(path.read_text())
        c["data"]["components"]["vae"] = {"spec": "toy", "fingerprint": old.fingerprint, "encoder_fingerprint": old.encoder_fingerprint}
        path.write_text(json.dumps(c))
    assets = tmp_path / "assets"
    if encoder == "same":
        _with_new_decoder(assets / "toy" / "vae", base, decoder_base_dim=12)
        write_pipeline(work, assets)
        entry = json.loads((assets / "pipeline.json").read_text())["components"]["vae"]
        now = load_vae(f"wan:{assets / 'toy' / 'vae'}")
        assert entry["fingerprint"] == now.fingerprint != old.fingerprint
        assert entry["encoder_fingerprint"] == old.encoder_fingerprint
    else:
        _tiny_module(1).save_pretrained(assets / "toy" / "vae", safe_serialization=True)
        with pytest.raises(MismatchError, match="did not make stage 1's latents"):
            write_pipeline(work, assets)
        assert not (assets / "pipeline.json").exists() and not (assets / "toy" / "runs").exists()  # nothing copied

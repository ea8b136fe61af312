"""Typed run folders (semgen_cli.runs): the bundled runs read through `migrate`, an older folder
is filled in, an unknown key or a newer version is refused in one line, and a run saves back
the keys it read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from semgen_cli.errors import InputError, MismatchError
from semgen_cli.geometry import ClipGeometry
from semgen_cli.runs import RUN_VERSION, CompressorRun, LatentRun, SemanticRun, check_pair
from tests.conftest import run_inproc

ASSETS = Path(__file__).resolve().parents[1] / "semgen_cli" / "assets"


def _bundled() -> tuple[Path, Path]:
    p = json.loads((ASSETS / "pipeline.json").read_text())
    return ASSETS / p["latent_run"], ASSETS / p["semantic_run"]


def test_bundled_runs_load_through_migrate():
    lat_dir, sem_dir = _bundled()
    raw = json.loads((lat_dir / "config.json").read_text())
    assert "version" not in raw and "text" not in raw  # written before runs had a version: migrate fills them
    lat = LatentRun.from_dir(lat_dir, "--latent-run")
    sem = SemanticRun.from_dir(sem_dir, "--semantic-run")
    assert lat.version == sem.version == RUN_VERSION
    assert lat.text == sem.text == {"padding": "mask"} and lat.vae_layout is None
    assert lat.condition == "semantic" and lat.dit["attention"] == "swin"
    assert lat.geometry == ClipGeometry(8.0, 3.2, 4, 8, 2)
    assert sem.compressor_fingerprint == json.loads((ASSETS / "pipeline.json").read_text())["compressor_fingerprint"]
    check_pair(lat, sem)  # the bundled pair belongs together


def test_an_older_folder_migrates_and_saves_with_its_version(tmp_path):
    lat_dir, _ = _bundled()
    old = tmp_path / "old"
    old.mkdir()
    cfg = json.loads((lat_dir / "config.json").read_text())
    for key in ("version", "text", "vae_layout", "compressor_source"):
        cfg.pop(key, None)
    (old / "config.json").write_text(json.dumps(cfg))
    run = LatentRun.from_dir(old, "--latent-run")
    assert (run.version, run.text, run.vae_layout, run.compressor_source) == (RUN_VERSION, {"padding": "mask"}, None, None)
    run.save()
    saved = json.loads((old / "config.json").read_text())
    assert saved["version"] == RUN_VERSION and saved["text"] == {"padding": "mask"} and "path" not in saved
    assert LatentRun.from_dir(old, "--latent-run") == run


def test_unknown_key_and_newer_version_are_refused_in_one_line(tmp_path):
    lat_dir, sem_dir = _bundled()
    for name, edit, match in (("unknown", {"surprise": 1}, "unknown key surprise"), ("newer", {"version": RUN_VERSION + 1}, "upgrade semgen")):
        bad = tmp_path / name
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps({**json.loads((lat_dir / "config.json").read_text()), **edit}))
        with pytest.raises(InputError, match=match):
            LatentRun.from_dir(bad, "--latent-run")
        out = tmp_path / f"{name}.mp4"
        r = run_inproc("generate", "a red circle", "--latent-run", str(bad), "--semantic-run", str(sem_dir), "--out", str(out))
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and match in lines[0] and str(bad) in lines[0], r.stderr
        assert not out.exists() and sorted(p.name for p in bad.iterdir()) == ["config.json"]


def test_check_pair_refuses_another_text_encoder_and_grid():
    lat_dir, sem_dir = _bundled()
    lat = LatentRun.from_dir(lat_dir, "--latent-run")
    sem = SemanticRun.from_dir(sem_dir, "--semantic-run")
    other = SemanticRun.from_dict({**sem.to_dict(), "data": {**sem.data, "components": {**sem.components, "text": {"fingerprint": "tiny:0"}}}}, sem_dir)
    with pytest.raises(MismatchError, match="text encoder tiny:0"):
        check_pair(lat, other)
    with pytest.raises(MismatchError, match="grid"):
        check_pair(lat, SemanticRun.from_dict({**sem.to_dict(), "semantic_grid": [1, 1]}, sem_dir))
    # the VAE may differ: a stage 1 fine-tuned on a new VAE keeps its stage 2
    check_pair(lat, SemanticRun.from_dict({**sem.to_dict(), "data": {**sem.data, "components": {**sem.components, "vae": {"fingerprint": "x"}}}}, sem_dir))


def test_a_compressor_run_that_did_not_finish_names_the_flag(tmp_path):
    run = tmp_path / "comp"
    run.mkdir()
    config = {"step": "fit-compressor", "compressor": {"in_dim": 4, "dim": 2, "hidden": 8, "kl_weight": 0.001}, "features": "semantic",
              "settings": {}, "train": {}, "data": {"components": {}, "producer": {}}}
    CompressorRun.write(config, run)
    assert json.loads((run / "config.json").read_text())["version"] == RUN_VERSION
    with pytest.raises(InputError, match="--compressor .*no compressor.safetensors"):
        CompressorRun.from_dir(run, "--compressor").load()
    shutil.rmtree(run)

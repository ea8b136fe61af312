"""toy-eval (generate + judge), the built-in prompt set, `semgen info`, and the `toy` spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.toy.prompts import HELD_OUT, default_prompts, held_out_flag, is_held_out
from semgen_cli.toy.world import parse_caption, parse_combos
from tests.conftest import load_example, run_inproc


def test_default_prompts_cover_held_out_and_every_value():
    prompts = default_prompts(24)
    assert len(prompts) == len(set(prompts)) == 24
    assert sum(map(is_held_out, prompts)) == 2 * len(HELD_OUT)
    attrs = [parse_caption(p) for p in prompts]
    assert {a["motion"] for a in attrs} == {"left", "right", "up", "down", "still"}
    assert parse_combos(held_out_flag()) == set(HELD_OUT)


def test_toy_eval_json_through_the_cli(runs, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moving left on a black background\n# a comment\na blue square standing still on a gray background\n")
    r = run_inproc("toy-eval", "--prompts", prompts, "--seconds", "1", "--latent-run", runs / "lat", "--semantic-run", runs / "sem", "--steps", "1", "--json", "--keep", tmp_path / "kept")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert len(data["videos"]) == 2 and set(data["summary"]["all"]) == {"background", "colour", "shape", "motion"}
    for row in data["videos"]:
        assert set(row["accuracy"]) == {"background", "colour", "shape", "motion"} and 0 <= row["accuracy"]["colour"] <= 1
    assert len(list((tmp_path / "kept").glob("*.mp4"))) == 2
    means = data["summary"]["all"]["colour"]
    assert means["frames"] == pytest.approx(sum(v["accuracy"]["colour"] for v in data["videos"]) / 2)


def test_toy_eval_errors(tmp_path):
    from semgen_cli.steps.toy_eval import ToyEvalConfig, read_prompt_file

    with pytest.raises(ConfigError):
        ToyEvalConfig(prompts=["a dog running in a park"])
    with pytest.raises(ConfigError, match="--seconds"):
        ToyEvalConfig(prompts=default_prompts(1), seconds=0)
    with pytest.raises(InputError, match="no such file"):
        read_prompt_file(str(tmp_path / "none.txt"))
    r = run_inproc("toy-eval", "--prompts", tmp_path / "none.txt")
    assert r.returncode == 2 and "no such file" in r.stderr


def test_info_runs():
    r = run_inproc("info")
    assert r.returncode == 0 and "torch" in r.stdout and "default pipeline" in r.stdout


def test_bundle_becomes_the_default_pipeline(runs, tmp_path, monkeypatch):
    """write_pipeline (examples/toy/bundle.py) keeps only what sampling needs and writes
    pipeline.json last; generate with no runs then uses it."""
    import semgen_cli.pipeline_file as P

    work = tmp_path / "work"
    work.mkdir()
    (work / "latent").symlink_to(runs / "lat")
    (work / "semantic").symlink_to(runs / "sem")
    assets = tmp_path / "assets"
    bundle = load_example("toy/bundle.py")
    bundle.main([str(work), str(assets)])
    pipeline = json.loads((assets / "pipeline.json").read_text())
    assert pipeline["latent_run"] == "toy/runs/latent" and pipeline["held_out_combinations"]
    assert pipeline["components"]["vae"]["encoder_fingerprint"].startswith("wan-encoder:")  # what a new decoder must match
    kept = sorted(p.name for p in (assets / "toy" / "runs" / "latent").rglob("*") if p.is_file())
    assert kept == ["config.json", "ema.safetensors", "latest", "state.json"]
    # the training machine's paths under WORKDIR are written relative to it, others stay
    w = str(work.resolve())
    assert P.relative_paths({"data": {"path": w + "/data"}, "x": [w, w + "x/y", "/elsewhere"]}, w) == {
        "data": {"path": "WORKDIR/data"}, "x": ["WORKDIR", w + "x/y", "/elsewhere"]}
    monkeypatch.setattr(P, "ASSETS", assets)
    r = run_inproc("generate", "a red circle moving left on a black background", "--seconds", "1", "--steps", "1", "--out", tmp_path / "o.mp4")
    assert r.returncode == 0, r.stderr
    assert "bundled default" in r.stdout
    (work / "latent2").symlink_to(runs / "lat")  # runs named otherwise inside the training folder
    P.write_pipeline(work, tmp_path / "assets2", latent="latent2")
    assert (tmp_path / "assets2" / "toy" / "runs" / "latent" / "checkpoints" / "latest").is_file()


def test_toy_eval_pipeline_file(runs, tmp_path):
    """--pipeline FILE scores the runs a pipeline.json names (paths relative to the file)."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "lat").symlink_to(runs / "lat")
    (folder / "sem").symlink_to(runs / "sem")
    (folder / "pipeline.json").write_text(json.dumps({"latent_run": "lat", "semantic_run": "sem"}))
    r = run_inproc("toy-eval", "--pipeline", folder / "pipeline.json", "--count", "1", "--seconds", "1", "--steps", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["videos"]) == 1


def test_toy_eval_pipeline_errors(runs, tmp_path):
    r = run_inproc("toy-eval", "--pipeline", tmp_path / "none.json", "--count", "1")
    assert r.returncode == 2 and "none.json" in r.stderr and "no such file" in r.stderr
    bad = tmp_path / "pipeline.json"
    bad.write_text("{}")
    r = run_inproc("toy-eval", "--pipeline", bad, "--count", "1")
    assert r.returncode == 2 and "pipeline.json" in r.stderr
    r = run_inproc("toy-eval", "--pipeline", bad, "--latent-run", runs / "lat", "--count", "1")
    assert r.returncode == 2 and "--pipeline" in r.stderr


def test_toy_eval_cfg_flags(runs, tmp_path):
    """--semantic-cfg/--latent-cfg/--semantic-noise reach generate (shown in its settings) and are validated there."""
    r = run_inproc("toy-eval", "--latent-run", runs / "lat", "--semantic-run", runs / "sem", "--count", "1",
                   "--seconds", "1", "--steps", "1", "--latent-cfg", "-1")
    assert r.returncode == 2 and "--latent-cfg must be >= 0" in r.stderr
    r = run_inproc("toy-eval", "--latent-run", runs / "lat", "--semantic-run", runs / "sem", "--count", "1",
                   "--seconds", "1", "--steps", "1", "--semantic-cfg", "3", "--latent-cfg", "1.5", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["videos"]) == 1
    r = run_inproc("toy-eval", "--latent-run", runs / "lat", "--semantic-run", runs / "sem", "--count", "1",
                   "--seconds", "1", "--steps", "1", "--semantic-noise", "-0.5")
    assert r.returncode == 2 and "--semantic-noise must be >= 0" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_inproc("toy-eval", "--latent-run", runs / "lat", "--semantic-run", runs / "sem", "--count", "1",
                   "--seconds", "1", "--steps", "1", "--semantic-noise", "0.125", "--json", "--keep", tmp_path / "kept")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)["videos"][0]
    assert json.loads(Path(row["path"]).with_suffix(".json").read_text())["sigma"] == 0.125


def test_toy_eval_rendered_plans_score_stage_1_alone(runs, tmp_path):
    """--plans rendered: each prompt's plan comes from a rendered clip of that caption; no stage 2."""
    r = run_inproc("toy-eval", "--latent-run", runs / "lat", "--count", "2", "--seconds", "1", "--steps", "1",
                   "--plans", "rendered", "--json", "--keep", tmp_path / "kept")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["plans"] == "rendered" and "rendered plans" in data["pipeline"] and len(data["videos"]) == 2
    for i, row in enumerate(data["videos"]):
        sidecar = json.loads(Path(row["path"]).with_suffix(".json").read_text())
        assert sidecar["plan"].startswith("reference video") and f"reference-{i:03d}.mp4" in sidecar["plan"]
        assert sidecar["semantic_run"] is None and sidecar["prompt"] == row["prompt"]
        assert sidecar["seed"] == i  # prompt i: seed + i, independent noise per prompt
    r = run_inproc("toy-eval", "--latent-run", runs / "lat", "--count", "1", "--plans", "perfect")
    assert r.returncode == 2 and "--plans 'perfect'" in r.stderr and len(r.stderr.strip().splitlines()) == 1

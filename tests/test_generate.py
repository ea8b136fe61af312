"""`semgen generate`: flags refused before anything loads, mismatched runs refused, and the tiny
pipeline end to end (exact duration and fps, seed determinism, --semantic-from, batches,
metadata, chunked decode = whole decode)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from semgen_cli.errors import ConfigError, InputError, MismatchError
from semgen_cli.steps import generate as G
from semgen_cli.io.outputs import output_paths
from semgen_cli.pipeline import decoded_frames
from semgen_cli.steps.generate import GenerateConfig, generate, resolve
from tests.conftest import run_inproc

PROMPT = "a red circle moving left on a black background"
FPS = 8


def cfg(runs: Path, out: Path, **kw) -> GenerateConfig:
    base = dict(prompts=[PROMPT], out=str(out), latent_run=str(runs / "lat"), semantic_run=str(runs / "sem"),
                semantic_steps=2, latent_steps=2, seed=7)
    return GenerateConfig(**{**base, **kw})


def frames_of(path) -> np.ndarray:
    from semgen_cli.io.video import read_video

    return read_video(path)


# ----------------------------------------------------------------------------- flags (no runs needed)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(seconds=0), "--seconds"),
        (dict(seconds=-1.0), "--seconds"),
        (dict(seconds=float("nan")), "--seconds"),
        (dict(seconds=float("inf")), "--seconds"),
        (dict(semantic_steps=0), "--semantic-steps"),
        (dict(latent_steps=0), "--latent-steps"),
        (dict(semantic_cfg=-1.0), "--semantic-cfg"),
        (dict(semantic_noise=-0.1), "--semantic-noise"),
        (dict(fps=0.0), "--fps"),
        (dict(size=(0, 64)), "--size"),
        (dict(decode_chunk=0), "--decode-chunk"),
        (dict(attention="local"), "--attention"),
        (dict(device="gpu"), "--device"),
        (dict(dtype="half"), "--dtype"),
        (dict(out="x.avi"), "mp4"),
        (dict(prompts=[]), "prompt"),
    ],
)
def test_config_refuses_bad_values(kw, match):
    with pytest.raises(ConfigError, match=match):
        GenerateConfig(**{"prompts": ["x"], **kw})


def test_config_refuses_missing_reference(tmp_path):
    with pytest.raises(InputError, match="--semantic-from"):
        GenerateConfig(prompts=["x"], semantic_from=str(tmp_path / "nope.mp4"))


def test_output_paths_are_numbered_for_batches():
    assert output_paths("out/a.mp4", 1) == [Path("out/a.mp4")]
    assert output_paths("out/a.mp4", 3) == [Path("out/a-000.mp4"), Path("out/a-001.mp4"), Path("out/a-002.mp4")]


def test_default_pipeline(tmp_path, monkeypatch):
    import semgen_cli.pipeline_file as P

    monkeypatch.setattr(P, "ASSETS", tmp_path)
    with pytest.raises(ConfigError, match="pass --latent-run and --semantic-run"):
        resolve(GenerateConfig(prompts=["x"]))
    (tmp_path / "pipeline.json").write_text(json.dumps({"latent_run": "runs/latent", "semantic_run": "runs/semantic"}))
    assert G.default_pipeline() == ((tmp_path / "runs/latent").resolve(), (tmp_path / "runs/semantic").resolve())


def test_read_prompts(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("a red circle\n\n# a comment\n  a blue square  \n")
    assert G.read_prompts(p) == ["a red circle", "a blue square"]
    p.write_text("\n\n")
    with pytest.raises(InputError, match="no prompts"):
        G.read_prompts(p)


# ----------------------------------------------------------------------------- runs that do not belong together


def test_one_run_missing_is_refused(runs, tmp_path):
    with pytest.raises(ConfigError, match="--semantic-run"):
        resolve(GenerateConfig(prompts=["x"], latent_run=str(runs / "lat")))
    with pytest.raises(ConfigError, match="--latent-run"):
        resolve(GenerateConfig(prompts=["x"], semantic_run=str(runs / "sem")))
    with pytest.raises(InputError, match="no such run folder"):
        resolve(cfg(runs, tmp_path / "o.mp4", semantic_run=str(tmp_path / "missing")))
    with pytest.raises(MismatchError, match="train-semantic"):
        resolve(cfg(runs, tmp_path / "o.mp4", semantic_run=str(runs / "comp")))
    with pytest.raises(MismatchError, match="train-latent"):
        resolve(cfg(runs, tmp_path / "o.mp4", latent_run=str(runs / "sem")))


def _edited_semantic_run(runs: Path, tmp_path: Path, edit) -> Path:
    sem = tmp_path / "sem"
    shutil.copytree(runs / "sem", sem)
    c = json.loads((sem / "config.json").read_text())
    edit(c)
    (sem / "config.json").write_text(json.dumps(c))
    return sem


def test_semantic_run_of_another_compressor_is_refused(runs, tmp_path):
    sem = _edited_semantic_run(runs, tmp_path, lambda c: c["latent_run"].update(compressor_fingerprint="compressor:000000000000"))
    with pytest.raises(MismatchError, match="compressor:000000000000"):
        generate(cfg(runs, tmp_path / "o.mp4", semantic_run=str(sem)))
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("role", ["text", "semantic"])
def test_semantic_run_of_other_components_is_refused(runs, tmp_path, role):
    sem = _edited_semantic_run(runs, tmp_path, lambda c: c["data"]["components"][role].update(fingerprint="other:123"))
    with pytest.raises(MismatchError, match=f"{role} encoder other:123"):
        resolve(cfg(runs, tmp_path / "o.mp4", semantic_run=str(sem)))


def test_semantic_run_from_data_of_another_vae_is_accepted(runs, tmp_path):
    """Stage 2 never sees VAE latents: a stage 1 retrained on a new VAE keeps its stage 2."""
    sem = _edited_semantic_run(runs, tmp_path, lambda c: c["data"]["components"]["vae"].update(fingerprint="other:123"))
    resolve(cfg(runs, tmp_path / "o.mp4", semantic_run=str(sem)))


def test_size_must_divide_by_stride_times_patch(runs, tmp_path):
    with pytest.raises(ConfigError, match="multiples of 16x16"):
        resolve(cfg(runs, tmp_path / "o.mp4", size=(60, 64)))


def test_less_than_a_frame_is_refused(runs, tmp_path):
    with pytest.raises(ConfigError, match="less than one frame"):
        resolve(cfg(runs, tmp_path / "o.mp4", seconds=0.01))


def test_extrapolation_warns(runs, tmp_path):
    r = resolve(cfg(runs, tmp_path / "o.mp4", seconds=6))
    assert any("extrapolates" in w for w in r.warnings)
    assert not resolve(cfg(runs, tmp_path / "o.mp4", seconds=1.5)).warnings
    longest = resolve(cfg(runs, tmp_path / "o.mp4")).seconds  # the longest trained clip (whole latent frames)
    assert not resolve(cfg(runs, tmp_path / "o.mp4", seconds=longest + 0.1)).warnings  # within one latent frame
    assert resolve(cfg(runs, tmp_path / "o.mp4")).seconds == r.max_seconds  # default: the trained length


def test_sigma_default_is_half_the_trained_max(runs, tmp_path):
    r = resolve(cfg(runs, tmp_path / "o.mp4"))
    assert r.sigma_max == 0.5 and r.sigma == 0.25
    r = resolve(cfg(runs, tmp_path / "o.mp4", semantic_noise=0.9))
    assert r.sigma == 0.9 and any("above" in w for w in r.warnings)


@pytest.mark.parametrize(
    "args",
    [["--seconds", "-1"], ["--seconds", "abc"], ["--seconds", "0"], ["--steps", "0"], ["--size", "60"]],
    ids=["negative", "not-a-number", "zero", "steps", "size"],
)
def test_cli_bad_flags_are_one_line_exit_2(runs, tmp_path, args):
    res = run_inproc("generate", "x", "--latent-run", str(runs / "lat"), "--semantic-run", str(runs / "sem"), "--out", str(tmp_path / "c.mp4"), *args)
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert not (tmp_path / "c.mp4").exists()


# ----------------------------------------------------------------------------- decoding


def test_chunked_decode_equals_whole_decode():
    import torch

    from semgen_cli.components import load_vae

    vae = load_vae("tiny")
    latents = torch.randn(4, 5, 4, 4, generator=torch.Generator().manual_seed(0))  # (C, T, h, w) → 17 frames
    whole = vae.decode(latents)
    for chunk in (1, 2, 3):
        parts = list(decoded_frames(vae, latents, 17, chunk))
        assert np.array_equal(np.concatenate(parts), whole), chunk
    cut = np.concatenate(list(decoded_frames(vae, latents, 11, 2)))  # trimmed inside a chunk
    assert np.array_equal(cut, whole[:11])


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize("seconds", [1.5, 6.0])
def test_generate_exact_duration(runs, tmp_path, seconds):
    from semgen_cli.io.video import probe

    out = tmp_path / "v.mp4"
    res = generate(cfg(runs, out, seconds=seconds, save_semantics=True))
    info = probe(out)
    assert info.frames == round(seconds * FPS) and info.fps == FPS
    assert abs(info.duration - seconds) <= 1 / FPS
    assert (info.height, info.width) == (64, 64)
    v = res.videos[0]
    assert v.frames == info.frames and set(v.seconds_per_stage) == {"text", "semantic", "latent", "decode"}
    assert res.drift_command == f"semgen drift {out}"
    assert (seconds > 4) == any("extrapolates" in w for w in res.warnings)
    from safetensors.torch import load_file

    plan = load_file(str(tmp_path / "v.semantic.safetensors"))["semantic"]
    assert plan.shape[1:] == (2, 2, 8)


@pytest.mark.slow
def test_same_seed_same_frames_other_seed_other_frames(runs, tmp_path):
    a, b, c = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"
    generate(cfg(runs, a, seconds=2, save_semantics=True))
    generate(cfg(runs, b, seconds=2))
    generate(cfg(runs, c, seconds=2, seed=8))
    fa, fb, fc = frames_of(a), frames_of(b), frames_of(c)
    assert np.array_equal(fa, fb)
    assert fa.shape == fc.shape and not np.array_equal(fa, fc)
    # a saved plan given back with the same seed replays the same video
    d = tmp_path / "d.mp4"
    res = generate(cfg(runs, d, seconds=2, semantic_run=None, semantic_from=str(tmp_path / "a.semantic.safetensors")))
    assert res.semantic_run is None
    assert np.array_equal(frames_of(d), fa)
    # a seed per video from one loaded pipeline (toy-eval): the same frames as a run with that --seed
    from semgen_cli.steps.generate import load

    pipe = load(cfg(runs, tmp_path / "e.mp4", prompts=[PROMPT, PROMPT], seconds=2))
    videos = [pipe.generate_one(PROMPT, seed, out=tmp_path / f"e-{seed}.mp4") for seed in (7, 8)]
    assert [v.seed for v in videos] == [7, 8]
    assert np.array_equal(frames_of(videos[0].path), fa) and np.array_equal(frames_of(videos[1].path), fc)


@pytest.mark.slow
def test_initial_noise_replays_generates_plan(runs, tmp_path):
    """initial_noise(r, seed) then plan_from_stage2 on its generator gives the plan generate saved
    for that seed (what examples/toy/diagnostics/plan_probe.py relies on to score toy-eval's plans)."""
    import torch
    from safetensors.torch import load_file

    from semgen_cli.pipeline import Pipeline, initial_noise

    c = cfg(runs, tmp_path / "p.mp4", seconds=2, save_semantics=True, seed=11)
    generate(c)
    saved = load_file(str(tmp_path / "p.semantic.safetensors"))["semantic"]
    r = resolve(c)
    pipe = Pipeline(c, r)
    with torch.inference_mode():
        g, noise, plan_eps = initial_noise(r, 11)
        cond, uncond = pipe.text(PROMPT)
        plan = pipe.plan_from_stage2(cond, uncond, g)[0]
    assert noise.shape == (1, *r.latent_shape) and plan_eps.shape == (1, *plan.shape)
    torch.testing.assert_close(plan.float(), saved, rtol=0, atol=0)
    _, other, _ = initial_noise(r, 12)
    assert not torch.equal(other, noise)


@pytest.mark.slow
def test_semantic_from_reference_video(runs, tmp_path):
    from semgen_cli.io.video import probe

    ref = runs / "videos" / "clip-000000.mp4"
    out = tmp_path / "r.mp4"
    res = generate(cfg(runs, out, seconds=None, semantic_run=None, semantic_from=str(ref)))
    assert probe(out).frames == round(4 * FPS)  # the reference's length by default
    side = json.loads((tmp_path / "r.json").read_text())
    assert side["plan"] == f"reference video: {ref}" and side["semantic_run"] is None
    assert res.warnings == []
    with pytest.raises(ConfigError, match="lasts only"):
        resolve(cfg(runs, out, seconds=10, semantic_from=str(ref)))
    # a reference per video from one loaded pipeline (toy-eval's rendered plans); not for a stage-2 pipeline
    from semgen_cli.steps.generate import load

    pipe = load(cfg(runs, out, seconds=1, semantic_run=None, semantic_from=str(ref)))
    video = pipe.generate_one(PROMPT, 0, plan=str(runs / "videos" / "clip-000001.mp4"), out=tmp_path / "r1.mp4")
    assert json.loads(video.sidecar.read_text())["plan"] == f"reference video: {runs / 'videos' / 'clip-000001.mp4'}"
    with pytest.raises(ConfigError, match="makes its plans from stage 2"):
        load(cfg(runs, out, seconds=1)).generate_one(PROMPT, 0, plan=str(ref))


@pytest.mark.slow
def test_metadata_and_sidecar(runs, tmp_path):
    from semgen_cli.io.video import read_metadata

    out = tmp_path / "m.mp4"
    generate(cfg(runs, out, seconds=1, size=(32, 48), attention="full"))
    meta = read_metadata(out)
    assert meta["prompt"] == PROMPT and meta["seed"] == 7 and meta["frames"] == 8
    assert meta["settings"]["latent_steps"] == 2 and meta["settings"]["attention"] == "full"
    assert meta["components"]["text"].startswith("tiny-umt5")
    side = json.loads((tmp_path / "m.json").read_text())
    assert side["prompt"] == PROMPT and side["mp4"] == str(out)
    assert set(side["seconds_per_stage"]) == {"text", "semantic", "latent", "decode"}
    assert all(m["peak"] > 0 for m in side["memory_per_stage"].values())
    assert frames_of(out).shape == (8, 32, 48, 3)


@pytest.mark.slow
def test_prompts_file_through_the_cli(runs, tmp_path, cli):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left on a black background\na blue square standing still on a gray background\n")
    res = cli("generate", "--prompts-file", str(prompts), "--seconds", "5", "--steps", "1", "--latent-run", str(runs / "lat"),
              "--semantic-run", str(runs / "sem"), "--out", str(tmp_path / "batch.mp4"))
    assert res.returncode == 0, res.stderr
    for i, prompt in enumerate(prompts.read_text().splitlines()):
        assert json.loads((tmp_path / f"batch-{i:03d}.json").read_text())["prompt"] == prompt
        assert (tmp_path / f"batch-{i:03d}.mp4").is_file()
    out = " ".join(res.stdout.split())
    assert f"semgen drift {tmp_path / 'batch-000.mp4'} {tmp_path / 'batch-001.mp4'}" in out
    assert "peak memory" in out and "warning:" in out and "extrapolates" in out  # 5 s > the 4 s clips it was trained on


def test_stage1_with_a_finer_patch_generates(runs, tmp_path):
    """A stage 1 fine-tuned with --patch 1,1,1 (the tiny run resized, compressor frozen) pairs with its stage 2
    and generates the asked duration: generate builds the DiT from the run's own config."""
    from semgen_cli.steps.train_latent import TrainLatentConfig, train_latent
    from semgen_cli.training import TrainConfig

    lat = tmp_path / "lat-p1"
    train_latent(TrainLatentConfig(str(runs / "data"), out=str(lat), preset="tiny", init=str(runs / "lat"), patch=(1, 1, 1), freeze_compressor=True),
                 TrainConfig(steps=1, batch_size=2))
    res = generate(cfg(runs, tmp_path / "p1.mp4", latent_run=str(lat), seconds=2))
    assert frames_of(res.videos[0].path).shape[0] == 2 * FPS

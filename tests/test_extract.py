"""`semgen extract` and `semgen inspect`: shards, index last, failures, resume, verify."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from semgen_cli.errors import ConfigError, InputError, MismatchError
from semgen_cli.io.shards import Dataset
from semgen_cli.io.video import write_video
from semgen_cli.steps.extract import ExtractConfig, extract
from tests.conftest import make_frames, run_cli, run_inproc


def make_videos(folder: Path, n: int = 3, frames: int = 17, fps: float = 8, captions: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    meta = []
    for i in range(n):
        name = f"clip-{i:02d}.mp4"
        write_video(folder / name, make_frames(frames + 4 * i, 32, 32, seed=i), fps=fps, crf=0)
        meta.append({"file_name": name, "text": f"clip number {i}", "colour": "red"})
    if captions:
        (folder / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    return folder


def cfg(videos: Path, out: Path, **kw) -> ExtractConfig:
    base = dict(videos=str(videos), out=str(out), fps=8, semantic_fps=2.0, shard_size=2, num_workers=0, dtype="float32")
    base.update(kw)
    return ExtractConfig(**base)


def test_extract_writes_shards_and_index(tmp_path):
    videos = make_videos(tmp_path / "videos")
    result = extract(cfg(videos, tmp_path / "data"))
    assert (result.samples, result.failed, result.shards_written) == (3, 0, 2)
    ds = Dataset(tmp_path / "data")
    assert len(ds) == 3 and [s.samples for s in ds.shards] == [2, 1]
    assert ds.fields["latents"]["shape"][1] == "T" and ds.fields["semantic"]["shape"][0] == "T"
    assert set(ds.components) == {"vae", "semantic", "text"}
    rec = ds.records[2]
    assert rec["caption"] == "clip number 2" and rec["attributes"] == {"colour": "red"}
    assert rec["frames"] == 25 and rec["latent_frames"] == 7  # 25 frames = 4·6 + 1
    assert (tmp_path / "data" / "failures.jsonl").read_text() == ""
    assert json.loads((tmp_path / "data" / "config.json").read_text())["step"] == "extract"
    assert all(ok is None for _, ok in ds.verify())


def test_shard_tensors_equal_components_applied_directly(tmp_path):
    from semgen_cli.components import load_semantic_encoder, load_text_encoder, load_vae
    from semgen_cli.io.video import read_video

    videos = make_videos(tmp_path / "videos", n=1, frames=21)
    extract(cfg(videos, tmp_path / "data"))
    ds = Dataset(tmp_path / "data")
    got = ds.load(0)
    path = videos / "clip-00.mp4"
    vae, sem, text = load_vae("tiny"), load_semantic_encoder("tiny"), load_text_encoder("tiny")
    with torch.inference_mode():
        frames = read_video(path, fps=8, size=(32, 32))
        want_lat = vae.encode(frames[: vae.valid_frames(len(frames))])
        want_sem = sem.encode(read_video(path, fps=2.0, size=(32, 32)))
        emb, mask = text.encode(["clip number 0"])
    torch.testing.assert_close(got["latents"], want_lat.float())
    torch.testing.assert_close(got["semantic"], want_sem.float())
    torch.testing.assert_close(got["text"], emb[0, : int(mask[0].sum())].float())


def test_bad_inputs_are_reported_and_the_run_goes_on(tmp_path):
    videos = make_videos(tmp_path / "videos", n=2)
    (videos / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "notes.mp4").write_text("this is text, not a video")
    write_video(videos / "nocaption.mp4", make_frames(9), fps=8)
    result = extract(cfg(videos, tmp_path / "data"))
    assert (result.samples, result.failed) == (2, 4)
    failures = {json.loads(l)["source"]: json.loads(l)["reason"] for l in (tmp_path / "data" / "failures.jsonl").read_text().splitlines()}
    assert set(failures) == {"corrupt.mp4", "empty.mp4", "notes.mp4", "nocaption.mp4"}
    assert "empty" in failures["empty.mp4"] and "no caption" in failures["nocaption.mp4"]
    assert all(src in reason for src, reason in failures.items())


def test_metadata_in_subfolders_names_videos_relative_to_itself(tmp_path):
    """Two toy-data style folders side by side extract as one data set; deeper metadata wins."""
    root = tmp_path / "videos"
    make_videos(root / "a", n=2)
    make_videos(root / "b" / "c", n=1)
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "a/clip-01.mp4", "text": "shadowed"}) + "\n")
    result = extract(cfg(root, tmp_path / "data"))
    assert (result.samples, result.failed) == (3, 0)
    got = {r["source"]: r["caption"] for r in Dataset(tmp_path / "data").records}
    assert got == {"a/clip-00.mp4": "clip number 0", "a/clip-01.mp4": "clip number 1", "b/c/clip-00.mp4": "clip number 0"}
    (root / "b" / "c" / "metadata.jsonl").write_text("{oops\n")
    with pytest.raises(InputError, match=r"b/c/metadata.jsonl:1: not valid JSON"):
        extract(cfg(root, tmp_path / "data2"))


def test_allow_uncaptioned_keeps_them(tmp_path):
    videos = make_videos(tmp_path / "videos", n=1, captions=False)
    result = extract(cfg(videos, tmp_path / "data", allow_uncaptioned=True))
    assert result.samples == 1 and Dataset(tmp_path / "data").records[0]["caption"] == ""


def test_max_seconds_cuts_and_says_so(tmp_path):
    videos = make_videos(tmp_path / "videos", n=1, frames=33)  # 4.1 s at 8 fps
    result = extract(cfg(videos, tmp_path / "data", max_seconds=2.0))
    rec = Dataset(tmp_path / "data").records[0]
    assert result.truncated == 1 and rec["truncated"] and rec["frames"] == 13 and rec["source_duration"] > 4


def test_rerun_keeps_finished_shards_and_refuses_other_settings(tmp_path):
    videos = make_videos(tmp_path / "videos")
    extract(cfg(videos, tmp_path / "data"))
    again = extract(cfg(videos, tmp_path / "data"))
    assert (again.shards_written, again.shards_kept, again.samples) == (0, 2, 3)
    with pytest.raises(MismatchError, match="fps"):
        extract(cfg(videos, tmp_path / "data", fps=4))


def test_index_records_the_semantic_fps_and_pixel_bounds_used(tmp_path):
    videos = make_videos(tmp_path / "videos", n=1)
    extract(cfg(videos, tmp_path / "data", semantic_fps=3.2, min_pixels=28 * 28, max_pixels=28 * 28))
    index = json.loads((tmp_path / "data" / "index.json").read_text())
    sem = index["components"]["semantic"]
    assert (sem["fps"], sem["min_pixels"], sem["max_pixels"]) == (3.2, 784, 784)
    assert (index["producer"]["min_pixels"], index["producer"]["max_pixels"]) == (784, 784)
    assert Dataset(tmp_path / "data").load(0)["semantic"].shape[1:3] == (1, 1)  # one 28x28 merge block
    # Defaults: the tiny tower keeps the image bounds; a Qwen checkpoint would get the video ones.
    extract(cfg(videos, tmp_path / "default"))
    sem = json.loads((tmp_path / "default" / "index.json").read_text())["components"]["semantic"]
    assert (sem["fps"], sem["min_pixels"], sem["max_pixels"]) == (2.0, 56 * 56, 28 * 28 * 1280)
    # A resume with other bounds would mix two token grids in one dataset.
    with pytest.raises(MismatchError, match="max_pixels"):
        extract(cfg(videos, tmp_path / "data", semantic_fps=3.2, min_pixels=28 * 28, max_pixels=56 * 56))


def test_cli_pixel_bounds_errors_are_one_line_and_write_nothing(tmp_path):
    videos = make_videos(tmp_path / "videos", n=1)
    for args, msg in ((["--min-pixels", "0"], "--min-pixels must be positive, got 0"),
                      (["--min-pixels", "5000", "--max-pixels", "4000"], "--min-pixels 5000 is above --max-pixels 4000")):
        r = run_inproc("extract", str(videos), "--out", str(tmp_path / "data"), *args)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "data").exists()


def test_ranks_write_distinct_shards_and_rank0_indexes_all(tmp_path, monkeypatch):
    videos = make_videos(tmp_path / "videos", n=4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    extract(cfg(videos, tmp_path / "data", shard_size=1))
    assert not (tmp_path / "data" / "index.json").exists()
    assert sorted(p.name for p in (tmp_path / "data").glob("shard-*.safetensors")) == ["shard-00001.safetensors", "shard-00003.safetensors"]
    monkeypatch.setenv("RANK", "0")
    extract(cfg(videos, tmp_path / "data", shard_size=1))
    single = tmp_path / "single"
    monkeypatch.setenv("WORLD_SIZE", "1")
    extract(cfg(videos, single, shard_size=1))
    a, b = Dataset(tmp_path / "data"), Dataset(single)
    assert len(a) == 4 and [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]


def test_config_errors():
    with pytest.raises(ConfigError, match="--fps"):
        ExtractConfig(videos="v", fps=0)
    with pytest.raises(ConfigError, match="multiples of 16"):
        ExtractConfig(videos="v", size=(30, 32))
    with pytest.raises(ConfigError, match="--dtype"):
        ExtractConfig(videos="v", dtype="int8")


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        extract(cfg(tmp_path / "nope", tmp_path / "data"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no video files"):
        extract(cfg(tmp_path / "empty", tmp_path / "data"))


def test_dataset_errors(tmp_path):
    with pytest.raises(InputError, match="no such data folder"):
        Dataset(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    with pytest.raises(InputError, match="index.json: missing"):
        Dataset(tmp_path / "half")
    (tmp_path / "half" / "index.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        Dataset(tmp_path / "half")


@pytest.mark.slow
def test_killed_extraction_resumes_to_the_same_result(tmp_path):
    videos = make_videos(tmp_path / "videos", n=6, frames=33)
    args = ["extract", str(videos), "--fps", "8", "--semantic-fps", "2", "--shard-size", "1", "--num-workers", "0"]
    straight = run_cli(*args, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "semgen_cli.cli.app", *args, "--out", str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "killed" / ".progress" / "shard-00001.json"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "index.json").exists(), "killed too late to test resume"
    resumed = run_cli(*args, "--out", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr
    assert "kept" in resumed.stdout
    for shard in sorted((tmp_path / "straight").glob("shard-*")):
        assert shard.read_bytes() == (tmp_path / "killed" / shard.name).read_bytes(), shard.name
    a = json.loads((tmp_path / "straight" / "index.json").read_text())
    b = json.loads((tmp_path / "killed" / "index.json").read_text())
    assert a["shards"] == b["shards"] and a["total_samples"] == b["total_samples"] == 6


def test_resume_refuses_shards_made_by_other_weights_behind_the_same_spec(tmp_path):
    """`--vae wan:DIR` names whatever lies in DIR now: new weights there must not be mixed with
    shards the old ones made (the toy VAE was retrained under the same spec)."""
    import diffusers

    from semgen_cli.components.vae import TINY_WAN_CONFIG

    videos = make_videos(tmp_path / "videos", n=3)
    vae_dir, data = tmp_path / "vae", tmp_path / "data"
    torch.manual_seed(1)
    diffusers.AutoencoderKLWan(**TINY_WAN_CONFIG).save_pretrained(vae_dir)
    args = ["extract", str(videos), "--out", str(data), "--vae", f"wan:{vae_dir}", "--fps", "8", "--semantic-fps", "2",
            "--shard-size", "2", "--num-workers", "0"]
    assert run_inproc(*args).returncode == 0
    (data / "index.json").unlink()  # as if stopped before the last shard's index: a resume follows
    (data / ".progress" / "shard-00001.json").unlink()
    shard0 = (data / "shard-00000.safetensors").read_bytes()
    torch.manual_seed(2)
    diffusers.AutoencoderKLWan(**TINY_WAN_CONFIG).save_pretrained(vae_dir)
    r = run_inproc(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and str(data) in r.stderr and "vae wan:" in r.stderr and "another --out" in r.stderr
    assert (data / "shard-00000.safetensors").read_bytes() == shard0 and not (data / "index.json").exists()
    r = run_inproc(*args[:3], str(tmp_path / "fresh"), *args[4:])  # a new --out works
    assert r.returncode == 0, r.stderr


def test_cli_extract_inspect_verify_and_flipped_byte(tmp_path):
    videos = make_videos(tmp_path / "videos", n=2)
    (videos / "broken.mp4").write_bytes(b"\x00" * 100)
    data = tmp_path / "data"
    r = run_inproc("extract", str(videos), "--out", str(data), "--fps", "8", "--num-workers", "1")
    assert r.returncode == 1, r.stdout + r.stderr  # one input failed
    assert "semgen fit-compressor" in r.stdout and "failures.jsonl" in r.stdout
    ok = run_inproc("inspect", str(data), "--verify")
    assert ok.returncode == 0 and "match the index" in ok.stdout, ok.stdout + ok.stderr
    shard = next(data.glob("shard-*.safetensors"))
    b = bytearray(shard.read_bytes()); b[-10] ^= 0xFF; shard.write_bytes(bytes(b))
    bad = run_inproc("inspect", str(data), "--verify")
    assert bad.returncode == 2 and "failed verification" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_cli_bad_flag_is_one_line(tmp_path):
    r = run_inproc("extract", str(tmp_path), "--size", "abc")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--size" in r.stderr


@pytest.mark.slow
def test_torchrun_two_ranks_index_covers_all_shards(tmp_path):
    import shutil

    videos = make_videos(tmp_path / "videos", n=4)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun ships with torch"
    r = subprocess.run(
        [torchrun, "--nproc_per_node=2", "--master_port=29533", "-m", "semgen_cli.cli.app", "extract", str(videos),
         "--out", str(tmp_path / "data"), "--fps", "8", "--semantic-fps", "2", "--shard-size", "1", "--num-workers", "0"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ds = Dataset(tmp_path / "data")
    assert len(ds) == 4 and [s.name for s in ds.shards] == [f"shard-{k:05d}" for k in range(4)]

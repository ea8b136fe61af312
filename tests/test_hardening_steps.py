"""Faults through the commands (issue: hardening, parts 2, 4, 5, 9) on the tiny runs of the
`runs` fixture: each is one error line, exit 2 (130 for Ctrl-C), and leaves what was already
written as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import run_inproc
from tests.test_hardening_train import snapshot

ROOT = Path(__file__).resolve().parents[1]


def error_line(r) -> str:
    """The one error line of a refused command (and that it is one line, exit 2, no traceback)."""
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), (r.returncode, r.stdout[-2000:], r.stderr)
    return lines[0]


def latent_args(runs: Path, out: Path, *extra: str, data: Path | None = None) -> list[str]:
    return ["train-latent", str(data or runs / "data"), "--compressor", str(runs / "comp"), "--preset", "tiny",
            "--batch-size", "2", "--out", str(out), *extra]


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def latest(run: Path) -> Path:
    from semgen_cli.training import latest_checkpoint

    return latest_checkpoint(run)


def flip(path: Path, offset: int = -7) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- part 2: non-finite numbers


def test_train_latent_with_an_absurd_lr_stops_with_one_line_and_finite_checkpoints(runs, tmp_path):
    from safetensors.torch import load_file

    r = run_inproc(*latent_args(runs, tmp_path / "nan", "--steps", "6", "--save-every", "1", "--lr", "1e9"))
    msg = error_line(r)
    assert "step " in msg and "not finite" in msg and "lower --lr" in msg
    for f in (tmp_path / "nan" / "checkpoints").glob("*/*.safetensors"):
        assert all(torch.isfinite(t.float()).all() for t in load_file(str(f)).values()), f


def test_a_nan_in_a_shard_is_named_by_its_sample(runs, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    data = tmp_path / "data"
    shutil.copytree(runs / "data", data)
    shard = sorted(data.glob("shard-*.safetensors"))[0]
    with safe_open(str(shard), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(shard))
    victim = sorted(tensors)[0].split("/")[0]
    tensors[f"{victim}/latents"] = tensors[f"{victim}/latents"].clone().fill_(float("nan"))
    save_file(tensors, str(shard), metadata=meta)
    r = run_inproc(*latent_args(runs, tmp_path / "run", "--steps", "8", "--save-every", "1", data=data))
    msg = error_line(r)
    assert victim in msg and "not finite" in msg


def test_generate_refuses_non_finite_weights(runs, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    lat = copy_run(runs / "lat", tmp_path / "lat")
    ema = latest(lat) / "ema.safetensors"
    with safe_open(str(ema), "pt") as f:
        meta = f.metadata()
    t = load_file(str(ema))
    name = next(k for k in sorted(t) if k.startswith("dit."))
    t[name] = t[name].clone().fill_(float("nan"))
    save_file(t, str(ema), metadata=meta)
    out = tmp_path / "o.mp4"
    r = run_inproc("generate", "x", "--latent-run", lat, "--semantic-run", runs / "sem", "--seconds", "1", "--steps", "1", "--out", out)
    msg = error_line(r)
    assert "ema.safetensors" in msg and "NaN or inf" in msg and not out.exists()


def test_generate_refuses_a_non_finite_plan(runs, tmp_path):
    from semgen_cli.steps.generate import GenerateConfig, generate

    plan = tmp_path / "p.semantic.safetensors"
    generate(GenerateConfig(["x"], out=str(tmp_path / "p.mp4"), seconds=1, latent_run=str(runs / "lat"), semantic_run=str(runs / "sem"),
                            semantic_steps=1, latent_steps=1, save_semantics=True))
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(plan), "pt") as f:
        meta = f.metadata()
    t = load_file(str(plan))
    t["semantic"][0] = float("nan")
    save_file(t, str(plan), metadata=meta)
    out = tmp_path / "o.mp4"
    r = run_inproc("generate", "x", "--latent-run", runs / "lat", "--semantic-from", plan, "--steps", "1", "--out", out)
    msg = error_line(r)
    assert "semantic plan" in msg and "NaN or inf" in msg and not out.exists()


def test_extract_never_stores_a_non_finite_tensor(tmp_path, monkeypatch):
    import semgen_cli.steps.extract as E
    from semgen_cli.toy.dataset import ToyDataConfig, write_toy_dataset

    write_toy_dataset(tmp_path / "videos", ToyDataConfig(count=2, seconds=2, seed=1))
    real = E._load_components

    def poisoned(cfg):
        enc = real(cfg)
        encode = enc["vae"].encode
        calls = {"n": 0}

        def nan_first(frames):
            calls["n"] += 1
            z = encode(frames)
            return z * float("nan") if calls["n"] == 1 else z

        monkeypatch.setattr(enc["vae"], "encode", nan_first)
        return enc

    monkeypatch.setattr(E, "_load_components", poisoned)
    res = E.extract(E.ExtractConfig(str(tmp_path / "videos"), out=str(tmp_path / "data"), fps=8, num_workers=0))
    assert res.samples == 1 and res.failed == 1
    failure = json.loads((tmp_path / "data" / "failures.jsonl").read_text().splitlines()[0])
    assert "NaN or inf" in failure["reason"] and "latents" in failure["reason"]


# ----------------------------------------------------------------------------- part 4: one writer


HOLD = """
import sys, time
from semgen_cli.io.lock import hold
with hold(sys.argv[1], "test", folder=sys.argv[2] == "folder"):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder():
    procs = []

    def _hold(path: Path, folder: bool = True) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(path), "folder" if folder else "file"], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p

    yield _hold
    for p in procs:
        p.kill()
        p.wait()


def test_a_busy_run_folder_is_refused_naming_the_holder(runs, tmp_path, holder):
    lat = copy_run(runs / "lat", tmp_path / "lat")
    before = snapshot(lat)
    p = holder(lat)
    msg = error_line(run_inproc(*latent_args(runs, lat, "--steps", "3", "--resume")))
    assert f"pid {p.pid}" in msg and "in use" in msg
    assert {k: v for k, v in snapshot(lat).items() if k != ".semgen.lock"} == before


def test_a_busy_data_folder_is_refused(runs, tmp_path, holder):
    p = holder(tmp_path / "data")
    msg = error_line(run_inproc("extract", runs / "videos", "--out", tmp_path / "data", "--fps", "8"))
    assert f"pid {p.pid}" in msg and "data folder in use" in msg
    assert sorted(x.name for x in (tmp_path / "data").iterdir()) == [".semgen.lock"]


def test_a_busy_generate_output_is_refused(runs, tmp_path, holder):
    out = tmp_path / "o.mp4"
    p = holder(out, folder=False)
    msg = error_line(run_inproc("generate", "x", "--latent-run", runs / "lat", "--semantic-run", runs / "sem", "--seconds", "1", "--out", out))
    assert f"pid {p.pid}" in msg and not out.exists()


def test_two_video_writers_of_one_name_use_their_own_temp_files(tmp_path):
    from semgen_cli.io.video import VideoWriter

    a = VideoWriter(tmp_path / "o.mp4", fps=8, width=16, height=16)
    b = VideoWriter(tmp_path / "o.mp4", fps=8, width=16, height=16)
    assert a._tmp != b._tmp and str(os.getpid()) in a._tmp.name


# ----------------------------------------------------------------------------- part 5: corrupt, missing, foreign files


def test_a_truncated_ema_is_named_by_train_semantic(runs, tmp_path):
    lat = copy_run(runs / "lat", tmp_path / "lat")
    ema = latest(lat) / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:100])
    msg = error_line(run_inproc("train-semantic", runs / "data", "--latent-run", lat, "--preset", "tiny", "--batch-size", "2",
                                "--steps", "1", "--out", tmp_path / "s"))
    assert str(ema) in msg and not (tmp_path / "s").exists()


def test_a_missing_ema_is_named_not_used_as_the_raw_weights(runs, tmp_path):
    lat = copy_run(runs / "lat", tmp_path / "lat")
    ema = latest(lat) / "ema.safetensors"
    ema.unlink()
    msg = error_line(run_inproc("train-semantic", runs / "data", "--latent-run", lat, "--preset", "tiny", "--batch-size", "2",
                                "--steps", "1", "--out", tmp_path / "s"))
    assert str(ema) in msg and "missing" in msg
    # generate said "trained on another compressor" (the raw weights' fingerprint); now the file
    msg = error_line(run_inproc("generate", "x", "--latent-run", lat, "--semantic-run", runs / "sem", "--seconds", "1", "--out", tmp_path / "o.mp4"))
    assert str(ema) in msg and "compressor" not in msg


@pytest.mark.parametrize("fault", ["flip-optimizer", "missing-optimizer", "truncate-model", "flip-model"])
def test_resume_names_the_broken_file(runs, tmp_path, fault):
    lat = copy_run(runs / "lat", tmp_path / "lat")
    what, name = fault.split("-")
    f = latest(lat) / ("optimizer.pt" if name == "optimizer" else "model.safetensors")
    {"flip": flip, "missing": lambda p: p.unlink(), "truncate": lambda p: p.write_bytes(p.read_bytes()[:50])}[what](f)
    before = snapshot(lat)
    msg = error_line(run_inproc(*latent_args(runs, lat, "--steps", "3", "--resume")))
    assert str(f) in msg
    assert snapshot(lat) == before


def test_corrupt_compressor_weights_are_named(runs, tmp_path):
    comp = copy_run(runs / "comp", tmp_path / "comp")
    w = comp / "compressor.safetensors"
    for damage in (lambda: w.write_bytes(w.read_bytes()[:64]), lambda: w.write_bytes(b"")):
        damage()
        msg = error_line(run_inproc("train-latent", runs / "data", "--compressor", comp, "--preset", "tiny", "--steps", "1", "--out", tmp_path / "l"))
        assert str(w) in msg and not (tmp_path / "l").exists()


@pytest.mark.parametrize("content", ["", "{}", "[]", '{"step": "train-latent"}'], ids=["empty", "object", "list", "step-only"])
def test_a_damaged_run_config_is_named_not_called_another_dit(runs, tmp_path, content):
    lat = copy_run(runs / "lat", tmp_path / "lat")
    (lat / "config.json").write_text(content)
    before = snapshot(lat)
    msg = error_line(run_inproc(*latent_args(runs, lat, "--steps", "3", "--resume")))
    assert "config.json" in msg and "different dit" not in msg
    msg = error_line(run_inproc("generate", "x", "--latent-run", lat, "--semantic-run", runs / "sem", "--out", tmp_path / "o.mp4"))
    assert "config.json" in msg
    assert snapshot(lat) == before


@pytest.mark.parametrize("index", [
    [], {"format": "semgen-shards", "version": 1},
    {"format": "semgen-shards", "version": 1, "producer": {}, "components": {}, "fields": {}, "total_samples": 3, "shards": [{"name": "shard-00000"}]},
    {"format": "semgen-shards", "version": 1, "producer": {}, "components": {}, "fields": {}, "total_samples": 9, "shards": []},
], ids=["list", "no-shards", "shard-without-bytes", "wrong-total"])
def test_a_wrong_shape_index_is_named(runs, tmp_path, index):
    data = tmp_path / "data"
    shutil.copytree(runs / "data", data)
    (data / "index.json").write_text(json.dumps(index))
    msg = error_line(run_inproc("inspect", data))
    assert "index.json" in msg
    msg = error_line(run_inproc("fit-compressor", data, "--steps", "1", "--out", tmp_path / "c"))
    assert "index.json" in msg and not (tmp_path / "c").exists()


def test_inspect_verify_checks_a_runs_hashes(runs, tmp_path):
    lat = copy_run(runs / "lat", tmp_path / "lat")
    r = run_inproc("inspect", lat, "--verify")
    assert r.returncode == 0 and "check out" in r.stdout, r.stderr
    ema = latest(lat) / "ema.safetensors"
    flip(ema)
    msg = error_line(run_inproc("inspect", lat, "--verify"))
    assert "1 of 3 weight file(s) failed" in msg
    comp = copy_run(runs / "comp", tmp_path / "comp")
    flip(comp / "compressor.safetensors")
    assert "failed verification" in error_line(run_inproc("inspect", comp, "--verify"))


def test_an_extract_rerun_rehashes_the_shards_it_keeps(runs, tmp_path):
    from semgen_cli.io.shards import Dataset

    data = tmp_path / "data"
    shutil.copytree(runs / "data", data)
    shard = sorted(data.glob("shard-*.safetensors"))[0]
    good = shard.read_bytes()
    flip(shard)  # same size: only its hash tells
    r = run_inproc("extract", runs / "videos", "--out", data, "--fps", "8")
    assert r.returncode == 0, r.stderr
    assert shard.read_bytes() == good
    assert all(problem is None for _, problem in Dataset(data).verify())


def test_the_bundle_records_its_weights_and_generate_checks_their_sizes(tmp_path):
    from semgen_cli.errors import InputError
    from semgen_cli.io.shards import read_json, sha256_file
    from semgen_cli.pipeline_file import ASSETS, default_pipeline

    p = read_json(ASSETS / "pipeline.json")
    assert len(p["files"]) == 2
    for rel, rec in p["files"].items():
        assert rec == {"bytes": (ASSETS / rel).stat().st_size, "sha256": sha256_file(ASSETS / rel)}
    default_pipeline()  # the bundled default loads as it is
    (tmp_path / "w.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "pipeline.json").write_text(json.dumps({"latent_run": "a", "semantic_run": "b", "files": {"w.safetensors": {"bytes": 11, "sha256": "0"}}}))
    with pytest.raises(InputError, match=r"w.safetensors: 10 bytes, 11 were written"):
        default_pipeline(tmp_path / "pipeline.json")


def test_a_folder_given_to_drift_is_called_a_folder(tmp_path):
    (tmp_path / "videos").mkdir()
    r = run_inproc("drift", tmp_path / "videos")
    assert "is a folder" in r.stdout + r.stderr and "no such file" not in r.stdout + r.stderr


def test_a_full_disk_is_named_not_conversion_failed(tmp_path, monkeypatch):
    import numpy as np

    import semgen_cli.io.video as V
    from semgen_cli.errors import InputError

    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\ncat > /dev/null\necho 'av_interleaved_write_frame(): No space left on device' >&2\n"
                    "echo 'Conversion failed!' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(V, "ffmpeg_exe", lambda: str(fake))
    with pytest.raises(InputError, match=r"o.mp4: the disk is full") as e:
        V.write_video(tmp_path / "o.mp4", np.zeros((2, 16, 16, 3), np.uint8), fps=8)
    assert "Conversion failed" not in str(e.value)
    assert not list(tmp_path.glob(".o.partial*")) and not (tmp_path / "o.mp4").exists()


# ----------------------------------------------------------------------------- part 9: signals, resume, children


def test_ctrl_c_saves_and_exits_130(runs, tmp_path, monkeypatch):
    import semgen_cli.training as T

    real = T._Trainer._one_step

    def then_ctrl_c(self, batches):
        row = real(self, batches)
        self.stop_requested = True  # what the first Ctrl-C does
        return row

    monkeypatch.setattr(T._Trainer, "_one_step", then_ctrl_c)
    r = run_inproc(*latent_args(runs, tmp_path / "run", "--steps", "5"))
    assert r.returncode == 130, r.stderr
    assert latest(tmp_path / "run").name == "step-0000001" and "--resume" in r.stdout
    r = run_inproc("fit-compressor", runs / "data", "--steps", "5", "--out", tmp_path / "comp")
    assert r.returncode == 130 and not (tmp_path / "comp" / "compressor.safetensors").exists()


def test_fit_compressor_resumed_after_its_last_checkpoint_keeps_its_final_loss(runs, tmp_path):
    args = ("fit-compressor", runs / "data", "--steps", "2", "--batch-size", "2", "--out", tmp_path / "c")
    assert run_inproc(*args).returncode == 0
    first = json.loads((tmp_path / "c" / "config.json").read_text())["final_loss"]
    r = run_inproc(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert first is not None and json.loads((tmp_path / "c" / "config.json").read_text())["final_loss"] == first


def test_resume_on_another_data_folder_needs_a_flag(runs, tmp_path):
    lat = copy_run(runs / "lat", tmp_path / "lat")
    other = tmp_path / "other"
    shutil.copytree(runs / "data", other)
    before = snapshot(lat)
    msg = error_line(run_inproc(*latent_args(runs, lat, "--steps", "3", "--resume", data=other)))
    assert str(other.resolve()) in msg and "--allow-new-data" in msg
    assert snapshot(lat) == before
    r = run_inproc(*latent_args(runs, lat, "--steps", "3", "--resume", "--allow-new-data", data=other))
    assert r.returncode == 0, r.stderr
    assert json.loads((lat / "config.json").read_text())["data"]["path"] == str(other.resolve())


@pytest.mark.parametrize("content, why", [
    ('{"steps": true}', "true"), ('{"steps": null}', "null"), ('{"lr": "big"}', "big"), ('{"resume": 1}', "true or false"),
])
def test_config_values_are_type_checked(runs, tmp_path, content, why):
    (tmp_path / "c.json").write_text(content)
    msg = error_line(run_inproc(*latent_args(runs, tmp_path / "run", "--config", tmp_path / "c.json")))
    assert why in msg and not (tmp_path / "run").exists()


@pytest.mark.parametrize("source", ["/dev/zero", "dir", "binary", "huge"])
def test_config_must_be_a_small_regular_text_file(runs, tmp_path, source):
    path = {"/dev/zero": Path("/dev/zero"), "dir": tmp_path, "binary": tmp_path / "b.json", "huge": tmp_path / "h.json"}[source]
    if source == "binary":
        path.write_bytes(b"\xff\xfe\x00{")
    if source == "huge":
        path.write_text('{"steps": 1' + " " * (2 << 20) + "}")
    t0 = time.perf_counter()
    msg = error_line(run_inproc(*latent_args(runs, tmp_path / "run", "--config", path)))
    assert "--config" in msg and time.perf_counter() - t0 < 20


@pytest.mark.slow
def test_extract_workers_end_when_the_extracting_process_is_killed(runs, tmp_path):
    """kill -9 of `semgen extract` left its decoder worker and resource tracker running for good."""
    import signal

    def children(pid: int) -> set[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        return {int(x) for x in out.split()}

    p = subprocess.Popen([sys.executable, "-m", "semgen_cli.cli.app", "extract", str(runs / "videos"), "--out", str(tmp_path / "d"),
                          "--fps", "8", "--num-workers", "1", "--shard-size", "1"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids: set[int] = set()
    deadline = time.time() + 120
    while time.time() < deadline and len(kids) < 2:  # the resource tracker and the decoder worker
        kids |= children(p.pid)
        time.sleep(0.2)
    assert kids, "the extraction started no worker"
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.time() + 20
    alive = kids
    while alive and time.time() < deadline:
        alive = {k for k in alive if Path(f"/proc/{k}").exists() and "zombie" not in Path(f"/proc/{k}/status").read_text().lower()}
        time.sleep(0.5)
    assert not alive, f"still running after the extraction was killed: {alive}"

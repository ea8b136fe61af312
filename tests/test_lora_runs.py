"""LoRA runs through the CLI: train-latent --init wan: --lora-rank, what the run stores, resume,
generate merging the adapters into the recorded base, `semgen merge`, and every error path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import run_inproc, tiny_data
from tests.test_dit import WAN_INIT

PROMPT = "a red circle moving left on a black background"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny data, a tiny Wan transformer folder and a LoRA stage-1 run on it (2 steps)."""
    import diffusers

    root = tmp_path_factory.mktemp("lora")
    data = tiny_data(root, count=4, compressor_steps=5, batch=2)
    torch.manual_seed(0)
    diffusers.WanTransformer3DModel(**WAN_INIT).save_pretrained(root / "wan" / "transformer")
    r = run_inproc(*latent_args(data, root / "wan", root / "lat"), "--steps", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    return data, root / "wan", root / "lat", r.stdout


def latent_args(data: Path, wan: Path, out: Path, *extra: str) -> list[str]:
    return ["train-latent", str(data), "--compressor", str(data.parent / "comp"), "--init", f"wan:{wan}", "--lora-rank", "2",
            "--batch-size", "2", "--save-every", "1", "--out", str(out), *extra]


def one_line_exit_2(r, *needles: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_the_run_says_what_trains_and_stores_only_that(setup):
    from semgen_cli.io.shards import load_tensors
    from semgen_cli.training import latest_checkpoint

    _, wan, lat, stdout = setup
    assert "LoRA rank 2 (alpha 2):" in stdout and "parameters train (" in stdout
    cfg = json.loads((lat / "config.json").read_text())
    rec = cfg["lora"]
    assert rec["rank"] == 2 and rec["base"]["source"] == f"wan:{wan.resolve()}" and rec["base"]["fingerprint"].startswith("base:")
    assert len(rec["modules"]) == 10 * cfg["dit"]["layers"]
    ckpt = latest_checkpoint(lat)
    for f in ("model.safetensors", "ema.safetensors"):
        keys = set(load_tensors(ckpt / f))
        assert not any("base_layer" in k for k in keys)  # the frozen base is not stored
        assert not any(k.startswith(("dit.time_embed.", "dit.text_embed.", "dit.head.")) for k in keys)
        assert any(".lora_A.default." in k for k in keys) and any(".lora_B.default." in k for k in keys)
        assert {"dit.semantic_embed.weight", "compressor.stats_mean"} <= keys  # the new layers and the compressor train fully


def test_resume_continues_exactly(setup, tmp_path):
    data, wan, lat, _ = setup
    out = tmp_path / "b"
    assert run_inproc(*latent_args(data, wan, out), "--steps", "1").returncode == 0
    r = run_inproc(*latent_args(data, wan, out), "--steps", "2", "--resume")
    assert r.returncode == 0, r.stdout + r.stderr

    def loss(run):
        return {json.loads(line)["step"]: json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()}[2]

    assert loss(out) == loss(lat)


def test_merge_writes_a_standalone_run_generate_reads_alike(setup, tmp_path):
    from semgen_cli.lora import run_of

    data, wan, lat, _ = setup
    r = run_inproc("merge", str(lat), "--out", str(tmp_path / "m"))
    assert r.returncode == 0, r.stdout + r.stderr
    merged_cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert merged_cfg["lora"] is None and merged_cfg["merged_lora"]["rank"] == 2
    a, b = run_of(lat, "--latent-run").sampling_weights(), run_of(tmp_path / "m", "--latent-run").sampling_weights()
    assert set(a) == set(b) and not any("lora_" in k for k in b)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    video = sorted((data.parent / "videos").glob("*.mp4"))[0]
    for run, name in ((lat, "lora.mp4"), (tmp_path / "m", "merged.mp4")):
        r = run_inproc("generate", PROMPT, "--latent-run", str(run), "--semantic-from", str(video), "--seconds", "2",
                       "--latent-steps", "1", "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stdout + r.stderr
    # the merged run needs no base: it still generates with the base gone
    moved = tmp_path / "wan-away"
    shutil.move(str(wan), moved)
    try:
        r = run_inproc("generate", PROMPT, "--latent-run", str(tmp_path / "m"), "--semantic-from", str(video), "--seconds", "2",
                       "--latent-steps", "1", "--out", str(tmp_path / "again.mp4"))
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        shutil.move(str(moved), wan)
    # merging again into the same folder, or a run trained without LoRA, is refused
    one_line_exit_2(run_inproc("merge", str(lat), "--out", str(tmp_path / "m")), "already exists")
    one_line_exit_2(run_inproc("merge", str(tmp_path / "m"), "--out", str(tmp_path / "m2")), "not a LoRA run")
    assert not (tmp_path / "m2").exists()


def test_generate_refuses_a_missing_or_changed_base(setup, tmp_path):
    import diffusers

    data, wan, lat, _ = setup
    video = sorted((data.parent / "videos").glob("*.mp4"))[0]
    out = tmp_path / "v.mp4"
    args = ["generate", PROMPT, "--latent-run", str(lat), "--semantic-from", str(video), "--seconds", "2", "--latent-steps", "1", "--out", str(out)]
    moved = tmp_path / "wan-away"
    shutil.move(str(wan), moved)
    try:
        one_line_exit_2(run_inproc(*args), f"LoRA base {wan.resolve()} is missing", "semgen merge")
        assert not out.exists()
        torch.manual_seed(1)  # another Wan at the recorded path
        diffusers.WanTransformer3DModel(**WAN_INIT).save_pretrained(wan / "transformer")
        one_line_exit_2(run_inproc(*args), f"LoRA base {wan.resolve()} holds other weights", "restore the original base")
        assert not out.exists()
        # resuming on another base is refused too, the run left as it was
        before = (lat / "config.json").read_text()
        one_line_exit_2(run_inproc(*latent_args(data, wan, lat), "--steps", "3", "--resume"), "holds other weights")
        assert (lat / "config.json").read_text() == before and not (lat / "checkpoints" / "step-0000003").exists()
    finally:
        shutil.rmtree(wan, ignore_errors=True)
        shutil.move(str(moved), wan)


@pytest.mark.parametrize("flags, needle", [
    (["--init", None], "--lora-rank needs --init wan:PATH or --init RUN"),
    (["--lora-targets", "qkv"], "--lora-targets 'qkv' matches no linear layer"),
    (["--lora-rank", "0"], "--lora-rank must be a whole number >= 1"),
    (["--lora-alpha", "-1"], "--lora-alpha must be a positive number"),
    (["--lora-rank", None, "--lora-alpha", "2"], "--lora-alpha and --lora-targets need --lora-rank R"),
])
def test_lora_flag_errors_write_nothing(setup, tmp_path, flags, needle):
    data, wan, _, _ = setup
    args = latent_args(data, wan, tmp_path / "x", "--steps", "1")
    if flags[1] is None:  # drop the flag
        i = args.index(flags[0])
        del args[i : i + 2]
    args += flags[2:] if flags[1] is None else flags
    one_line_exit_2(run_inproc(*args), needle)
    assert not (tmp_path / "x").exists()


def test_train_semantic_lora_over_its_own_init_and_on_a_lora_latent_run(setup, tmp_path):
    from semgen_cli.io.shards import load_tensors
    from semgen_cli.training import latest_checkpoint

    data, _, lat, _ = setup
    out = tmp_path / "sem"
    r = run_inproc("train-semantic", str(data), "--latent-run", str(lat), "--preset", "tiny", "--lora-rank", "2", "--batch-size", "2",
                   "--steps", "2", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "LoRA rank 2 (alpha 2):" in r.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lora"]["base"] is None  # no --init: the checkpoints hold the base too
    keys = set(load_tensors(latest_checkpoint(out) / "ema.safetensors"))
    assert any("base_layer" in k for k in keys) and any("lora_A" in k for k in keys)
    r = run_inproc("generate", PROMPT, "--latent-run", str(lat), "--semantic-run", str(out), "--seconds", "2", "--steps", "1",
                   "--out", str(tmp_path / "g.mp4"))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_ddp_and_fsdp_under_torchrun_train_lora_as_one_process(setup, tmp_path):
    """2 ranks, gloo: DDP trains; FSDP2 trains, stores only what trains (as one process does) and,
    stopped after a step and resumed, gives DDP's losses (the same ranks draw the same noise)."""
    import os
    import socket
    import subprocess
    import sys

    from semgen_cli.io.shards import load_tensors
    from semgen_cli.training import latest_checkpoint

    data, wan, lat, _ = setup

    def torchrun(out: Path, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m", "semgen_cli.cli.app",
               *latent_args(data, wan, out, *extra)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]

    def losses(run: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r}

    torchrun(tmp_path / "ddp", "--steps", "2")
    torchrun(tmp_path / "fsdp", "--steps", "1", "--fsdp")
    torchrun(tmp_path / "fsdp", "--steps", "2", "--fsdp", "--resume")
    ddp, fsdp = losses(tmp_path / "ddp"), losses(tmp_path / "fsdp")
    assert ddp.keys() == fsdp.keys() == {1, 2}
    assert torch.allclose(torch.tensor(list(fsdp.values())), torch.tensor(list(ddp.values())), rtol=1e-4)
    keys = set(load_tensors(latest_checkpoint(tmp_path / "fsdp") / "ema.safetensors"))
    assert keys == set(load_tensors(latest_checkpoint(lat) / "ema.safetensors"))


def test_adapters_on_a_run_as_base(setup, tmp_path):
    """--init RUN: the base is that run's DiT, read again by every reader of the LoRA run."""
    from semgen_cli.lora import run_of

    data, _, _, _ = setup
    base, out = tmp_path / "base", tmp_path / "ft"
    r = run_inproc("train-latent", str(data), "--compressor", str(data.parent / "comp"), "--preset", "tiny", "--batch-size", "2",
                   "--steps", "1", "--out", str(base))
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_inproc("train-latent", str(data), "--init", str(base), "--preset", "tiny", "--lora-rank", "2", "--lora-targets", "self_attn",
                   "--batch-size", "2", "--steps", "1", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    rec = json.loads((out / "config.json").read_text())["lora"]
    assert rec["base"]["source"] == str(base.resolve()) and len(rec["modules"]) == 4 * json.loads((base / "config.json").read_text())["dit"]["layers"]
    weights = run_of(out, "--latent-run").sampling_weights()
    assert not any("lora_" in k or "base_layer" in k for k in weights)
    video = sorted((data.parent / "videos").glob("*.mp4"))[0]
    r = run_inproc("generate", PROMPT, "--latent-run", str(out), "--semantic-from", str(video), "--seconds", "2",
                   "--latent-steps", "1", "--out", str(tmp_path / "v.mp4"))
    assert r.returncode == 0, r.stdout + r.stderr

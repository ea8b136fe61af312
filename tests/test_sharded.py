"""Sharded (torch.distributed.checkpoint) checkpoints of FSDP2 runs: exact resume on 2 ranks,
resharding to 1 process, asynchronous saves committed last, verification of every DCP file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.training import load_checkpoint_weights, train, verify_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from test_training import NoisyPoints, _free_port, cfg, collate, loss_fn, losses, make_net  # noqa: E402

WORKER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    from test_training import NoisyPoints, collate, loss_fn, make_net, cfg
    from semgen_cli.training import train
    from torch import nn
    out, ports, async_save = sys.argv[1], sys.argv[2:4], sys.argv[4] == "1"
    def net():  # with a trainable parameter that never gets a gradient, so has no optimizer state
        m = make_net()
        m.unused = nn.Linear(2, 2)
        return m
    train(net(), NoisyPoints(), collate, loss_fn, cfg(steps=6, async_save=async_save), out + "/full", fsdp=True)
    os.environ["MASTER_PORT"] = ports[0]  # each train() joins and leaves its own process group
    train(net(), NoisyPoints(), collate, loss_fn, cfg(steps=3, async_save=async_save), out + "/part", fsdp=True)
    os.environ["MASTER_PORT"] = ports[1]
    train(net(), NoisyPoints(), collate, loss_fn, cfg(steps=4, async_save=async_save), out + "/part", fsdp=True, resume=True)
    """
)


def _two_ranks(tmp_path: Path, async_save: bool) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    ports = [str(_free_port()) for _ in range(3)]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=ports[0], OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path), *ports[1:], "1" if async_save else "0"],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        for p in procs:
            out, _ = p.communicate(timeout=240)
            assert p.returncode == 0, out[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.mark.slow
@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_fsdp_checkpoints_are_sharded_resume_exactly_and_reshard_to_one_process(tmp_path, async_save):
    _two_ranks(tmp_path, async_save)
    full, part = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert part[4] == full[4]  # 3 steps + resume to 4 on 2 ranks: bit-identical
    ckpt = tmp_path / "full" / "checkpoints" / "step-0000006"
    names = {p.name for p in ckpt.iterdir()}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "ema.safetensors", "scheduler.json", "state.json"} <= names
    assert "model.safetensors" not in names and "optimizer.pt" not in names  # nothing gathered but the EMA export
    state = json.loads((ckpt / "state.json").read_text())
    assert set(state["files"]) == names - {"state.json"}  # every file of the DCP folder hashed
    assert (tmp_path / "full" / "checkpoints" / "latest").read_text().strip() == "step-0000006"
    assert not list((tmp_path / "full" / "checkpoints").glob("*.tmp*"))

    # Resharding 2 ranks -> 1 process: the raw weights read whole, and a plain (no --fsdp) resume.
    model = load_checkpoint_weights(ckpt, "model")
    assert set(model) == set(_net().state_dict())
    ema = load_checkpoint_weights(ckpt, "ema")
    assert set(ema) == set(model) and not torch.equal(ema["mlp.0.weight"], model["mlp.0.weight"])
    import shutil

    shutil.copytree(tmp_path / "part", tmp_path / "resharded")
    for p in (tmp_path / "resharded" / "checkpoints").iterdir():
        if p.name in ("step-0000004", "step-0000002") or p.name == "latest":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    result = train(_net(), NoisyPoints(), collate, loss_fn, cfg(steps=6), tmp_path / "resharded", resume=True)
    assert result.resumed_from == 3 and result.step == 6
    # the single process kept the run going in the safetensors layout
    assert (tmp_path / "resharded" / "checkpoints" / "step-0000006" / "model.safetensors").is_file()


def _net():
    m = make_net()
    m.unused = torch.nn.Linear(2, 2)
    return m


def test_corrupt_dcp_shard_is_named_before_loading(tmp_path):
    """A flipped byte in one rank's shard is caught by the hash state.json recorded."""
    ckpt = _fake_dcp_checkpoint(tmp_path)
    shard = ckpt / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"__0_0\.distcp: sha256 differs"):
        verify_checkpoint(ckpt)
    (ckpt / ".metadata").unlink()
    with pytest.raises(InputError, match=r"\.metadata: missing"):
        verify_checkpoint(ckpt)


def _fake_dcp_checkpoint(tmp_path: Path) -> Path:
    """A DCP folder written in one process by the same code path as a sharded save."""
    from semgen_cli.training.sharded import sharded_state, start_sharded_save

    model = make_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    final = tmp_path / "run" / "checkpoints" / "step-0000001"
    final.parent.mkdir(parents=True)
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    record = {"version": 1, "step": 1, "epoch": 0, "position": 4, "config": cfg().to_dict(),
              "rng": [{"python": 0, "numpy": 0, "torch": 0, "generator": 0}]}
    pending = start_sharded_save(final, sharded_state(model, opt, ema), ema, "ema.safetensors", {"format": "pt"},
                                 sched.state_dict(), record, main=True)
    return pending.commit()


def test_async_commit_writes_state_and_latest_only_after_the_shards(tmp_path):
    """state.json (the commit marker) and `latest` wait for the background write to finish."""
    from semgen_cli.training.sharded import _PendingSave

    tmp = tmp_path / "checkpoints" / "step-0000002.tmp-1"
    tmp.mkdir(parents=True)
    (tmp / "__0_0.distcp").write_bytes(b"shard")
    seen = {}

    class SlowUpload:  # stands in for dcp.async_save's future
        def result(self):
            time.sleep(0.3)
            (tmp / ".metadata").write_bytes(b"meta")  # DCP's coordinator writes .metadata last
            seen["state"] = (tmp / "state.json").exists() or (tmp_path / "checkpoints" / "step-0000002").exists()
            seen["latest"] = (tmp_path / "checkpoints" / "latest").exists()

    pending = _PendingSave(tmp, tmp_path / "checkpoints" / "step-0000002", SlowUpload(), {"step": 2}, main=True)
    assert not (tmp / "state.json").exists()
    final = pending.commit()
    assert seen == {"state": False, "latest": False}
    state = json.loads((final / "state.json").read_text())
    assert set(state["files"]) == {"__0_0.distcp", ".metadata"}  # hashed after the write completed
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-0000002\n"


def test_async_save_without_fsdp_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--async-save needs --fsdp"):
        train(make_net(), NoisyPoints(), collate, loss_fn, cfg(async_save=True), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_inspect_verify_hashes_every_file_of_a_dcp_folder(tmp_path):
    from conftest import run_inproc

    ckpt = _fake_dcp_checkpoint(tmp_path)
    run = ckpt.parent.parent
    (run / "config.json").write_text(json.dumps({"step": "train-latent", "data": {"path": "data"}}))
    r = run_inproc("inspect", run, "--verify")
    assert r.returncode == 0, r.stderr
    files = json.loads((ckpt / "state.json").read_text())["files"]
    assert {".metadata", "__0_0.distcp", "scheduler.json", "ema.safetensors"} <= set(files)
    assert f"all {len(files)} weight file(s) check out" in r.stdout
    shard = ckpt / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = run_inproc("inspect", run, "--verify")
    assert r.returncode == 2 and "1 of 4 weight file(s) failed verification" in r.stderr, r.stdout + r.stderr

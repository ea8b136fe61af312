"""Faults in training (issue: hardening, parts 2, 4, 5, 9) on the trainer's tiny world: a
non-finite loss, gradient or weight stops the run with one line and no checkpoint from that
state; corrupt, missing or foreign checkpoint files are named; the run folder has one writer;
a run killed in its first save resumes; files follow the umask."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.training import Sample, latest_checkpoint, load_checkpoint_weights, load_sampling_weights, train
from tests.test_training import NoisyPoints, Recorder, cfg, collate, loss_fn, losses, make_net


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class PoisonedPoints(NoisyPoints):
    """NoisyPoints whose sample 7 holds a NaN (as a corrupt shard would), with ids to name it."""

    def __getitem__(self, key: Sample):
        item = super().__getitem__(key)
        if key.index == 7:
            item["x"] = item["x"].clone()
            item["x"][0] = float("nan")
        return item

    def sample_id(self, key: Sample) -> str:
        return f"clip-{key.index:02d}"


# ----------------------------------------------------------------------------- part 2: non-finite numbers


def test_a_nan_in_the_data_stops_at_once_naming_the_sample(tmp_path):
    with pytest.raises(InputError) as e:
        train(make_net(), PoisonedPoints(), collate, loss_fn, cfg(steps=20, save_every=1), tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "clip-07" in msg and "not finite" in msg and msg.startswith("step ")
    step = int(msg.split()[1].rstrip(":"))
    # every checkpoint is from before that step, and the step itself was never logged
    saved = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "checkpoints").glob("step-*"))
    assert saved and max(saved) == step - 1 and max(losses(tmp_path)) == step - 1


def test_non_finite_weights_are_never_saved(tmp_path):
    """Weights that become inf outside the loss (a bit flip in memory; an overflowing update) are
    not committed, neither by the periodic save nor by the save at the end."""
    calls = {"n": 0}

    def spoil_at_2(model, batch, generator):
        calls["n"] += 1
        loss, fields = loss_fn(model, batch, generator)
        if calls["n"] == 2:
            with torch.no_grad():
                model.norm.bias.data[0] = float("inf")  # behind autograd: the loss and gradients stay finite
        return loss, fields

    with pytest.raises(ConfigError) as e:
        train(make_net(), NoisyPoints(), collate, spoil_at_2, cfg(steps=4, save_every=1), tmp_path)
    assert "\n" not in str(e.value) and str(e.value).startswith("step 2: weight") and "lower --lr" in str(e.value)
    assert [p.name for p in (tmp_path / "checkpoints").glob("step-*")] == ["step-0000001"]


def test_a_nan_loss_from_the_model_names_the_step_not_the_data(tmp_path):
    calls = {"n": 0}

    def nan_at_first(model, batch, generator):  # the first step after the resume, step 3
        calls["n"] += 1
        loss, fields = loss_fn(model, batch, generator)
        return (loss * float("nan") if calls["n"] == 1 else loss), fields

    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=2, save_every=1), tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"^step 3: the loss is not finite.*last checkpoint step-0000002 is kept") as e:
        train(make_net(), NoisyPoints(), collate, nan_at_first, cfg(steps=6, save_every=1), tmp_path, resume=True)
    assert "\n" not in str(e.value)
    assert snapshot(tmp_path) == before  # neither a checkpoint nor a metrics line from that state


def test_non_finite_weights_are_refused_when_loaded(tmp_path):
    from safetensors.torch import load_file, save_file

    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=1), tmp_path)
    ema = latest_checkpoint(tmp_path) / "ema.safetensors"
    from safetensors import safe_open

    with safe_open(str(ema), "pt") as f:
        meta = f.metadata()
    t = load_file(str(ema))
    t["mlp.0.weight"][0, 0] = float("inf")
    save_file(t, str(ema), metadata=meta)  # same size and header: only the values are wrong
    assert ema.stat().st_size == json.loads((ema.parent / "state.json").read_text())["files"]["ema.safetensors"]["bytes"]
    with pytest.raises(InputError, match=r"ema.safetensors: tensor mlp.0.weight holds NaN or inf"):
        load_sampling_weights(tmp_path)


def test_first_nonfinite_names_the_nested_tensor_whole_or_local():
    """The one walker behind every NaN/inf refusal: the dotted name of the first bad floating tensor
    in a nested state (dicts, lists of optimizer groups), integer tensors ignored; `local=True` (a
    sharded save checking its own shard) reads plain tensors the same."""
    from semgen_cli.training.distributed import _first_nonfinite

    bad = torch.ones(3)
    bad[1] = float("nan")
    state = {"model": {"a": torch.ones(2), "steps": torch.tensor([2**40])},
             "optim": {"state": [{"exp_avg": torch.zeros(2)}, {"exp_avg": bad}]}}
    for local in (False, True):
        assert _first_nonfinite(state, local=local) == "optim.state.1.exp_avg"
        assert _first_nonfinite({"model": state["model"]}, local=local) is None


# ----------------------------------------------------------------------------- part 5: corrupt checkpoint files


def _run(tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=2, save_every=1, keep_last=0), run)
    return run, latest_checkpoint(run)


def _flip(path: Path, offset: int = -7) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fault", [
    "truncate-model", "empty-model", "flip-model", "flip-ema", "flip-optimizer", "truncate-optimizer",
    "missing-optimizer", "missing-ema", "state-list", "state-no-step", "state-bad-rng",
])
def test_resume_names_a_corrupt_or_missing_checkpoint_file(tmp_path, fault):
    run, ckpt = _run(tmp_path)
    what, name = fault.split("-", 1)
    file = ckpt / {"model": "model.safetensors", "ema": "ema.safetensors", "optimizer": "optimizer.pt"}.get(name, "state.json")
    if what == "truncate":
        file.write_bytes(file.read_bytes()[:100])
    elif what == "empty":
        file.write_bytes(b"")
    elif what == "flip":
        _flip(file)
    elif what == "missing":
        file.unlink()
    elif name == "list":
        file.write_text("[]")
    elif name == "no-step":
        state = json.loads(file.read_text())
        del state["step"]
        file.write_text(json.dumps(state))
    elif name == "bad-rng":
        state = json.loads(file.read_text())
        state["rng"] = [{"python": 3}]
        file.write_text(json.dumps(state))
    before = snapshot(run)
    with pytest.raises(InputError) as e:
        train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=4, save_every=1), run, resume=True)
    msg = str(e.value)
    assert "\n" not in msg and str(file) in msg, msg
    assert snapshot(run) == before
    assert f"deleting {ckpt} resumes from step-0000001" in msg  # and doing so works
    shutil.rmtree(ckpt)
    assert train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=4, save_every=1), run, resume=True).resumed_from == 1


def test_checkpoints_record_the_bytes_and_sha256_of_their_files(tmp_path):
    from semgen_cli.io.shards import sha256_file

    run, ckpt = _run(tmp_path)
    files = json.loads((ckpt / "state.json").read_text())["files"]
    assert set(files) == {"model.safetensors", "ema.safetensors", "optimizer.pt"}
    for name, rec in files.items():
        assert rec == {"bytes": (ckpt / name).stat().st_size, "sha256": sha256_file(ckpt / name)}


def test_sampling_weights_are_checked_cheaply_and_named(tmp_path):
    run, ckpt = _run(tmp_path)
    (ckpt / "ema.safetensors").write_bytes((ckpt / "ema.safetensors").read_bytes()[:100])
    with pytest.raises(InputError, match=r"ema.safetensors: 100 bytes, \d+ were written") as e:
        load_checkpoint_weights(run, "ema")
    assert "\n" not in str(e.value)
    (ckpt / "ema.safetensors").unlink()  # gone: the raw weights are NOT used silently
    with pytest.raises(InputError, match=r"ema.safetensors: missing \(the run was trained with an EMA"):
        load_sampling_weights(run)


def test_a_run_without_ema_samples_its_model_weights(tmp_path):
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=1, ema_decay=0.0), tmp_path)
    assert set(load_sampling_weights(tmp_path)) == set(make_net().state_dict())


# ----------------------------------------------------------------------------- part 9: resume, signals, umask


def test_a_kill_during_the_first_save_resumes_from_scratch(tmp_path):
    """A folder with only an uncommitted first checkpoint (killed mid-save) resumes as a new run,
    with the losses of an uninterrupted one."""
    ref = tmp_path / "ref"
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=3), ref)
    run = tmp_path / "run"
    torn = run / "checkpoints" / "step-0000002.tmp-4242"
    torn.mkdir(parents=True)
    (torn / "model.safetensors").write_bytes(b"partial")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n')
    rec = Recorder()
    r = train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=3), run, resume=True, reporter=rec)
    assert r.step == 3 and r.resumed_from is None
    assert any("no complete checkpoint" in line for line in rec.lines)
    assert losses(run) == losses(ref) and not torn.exists()


def test_resume_of_a_folder_that_never_trained_is_still_refused(tmp_path):
    with pytest.raises(InputError, match="nothing to resume"):
        train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=1), tmp_path / "typo", resume=True)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        run, ckpt = _run(tmp_path)
    finally:
        os.umask(old)
    for f in ("model.safetensors", "ema.safetensors", "optimizer.pt", "state.json"):
        assert (ckpt / f).stat().st_mode & 0o777 == 0o666 & ~umask, f


# ----------------------------------------------------------------------------- part 4: one writer per run folder

HOLD = """
import sys, time
from semgen_cli.io.lock import hold
with hold(sys.argv[1], "run folder"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(path: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_naming_the_holder_and_the_lock_dies_with_it(tmp_path):
    run, _ = _run(tmp_path)
    before = snapshot(run)
    p = _holder(run)
    try:
        with pytest.raises(InputError) as e:
            train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=4), run, resume=True)
        msg = str(e.value)
        assert "\n" not in msg and f"pid {p.pid}" in msg and "in use by" in msg
        assert snapshot(run) == {**before, ".semgen.lock": (run / ".semgen.lock").read_bytes()}
    finally:
        p.kill()  # kill -9: the kernel drops the flock
        p.wait()
    r = train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=4), run, resume=True)
    assert r.step == 4 and not (run / ".semgen.lock").exists()


def test_the_lock_is_per_process_reentrant_and_a_refused_start_leaves_no_folder(tmp_path):
    from semgen_cli.io.lock import hold

    with hold(tmp_path / "a", "run folder"):
        with hold(tmp_path / "a", "run folder"):  # the step, then the trainer it calls
            pass
        assert (tmp_path / "a" / ".semgen.lock").is_file()
    assert not (tmp_path / "a").exists()  # created for the lock, empty: removed


def test_checkpoint_temp_folders_are_per_process_and_stale_ones_go(tmp_path):
    run = tmp_path / "run"
    stale = run / "checkpoints" / "step-0000001.tmp"
    stale.mkdir(parents=True)
    seen = []
    real = os.replace

    def spy(a, b):
        seen.append(Path(a).name)
        return real(a, b)

    import semgen_cli.training.state as T  # the module that renames a checkpoint folder into place

    T.os.replace = spy
    try:
        train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=1), run, resume=True)
    finally:
        T.os.replace = real
    assert f"step-0000001.tmp-{os.getpid()}" in seen and not stale.exists()


@pytest.mark.slow
def test_kill_int_of_a_background_training_saves_and_exits_130(tmp_path):
    """`cmd &` in a script starts with SIGINT ignored; a `kill -INT` still stops it after the step,
    saved, with exit 130 (so `train-latent … && train-semantic …` stops)."""
    script = f"""
import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
import time
from semgen_cli.training import train
from tests.test_training import NoisyPoints, collate, loss_fn, make_net, cfg
def slow(m, b, g):
    print("go", flush=True)  # inside the loop: the handler is in place
    time.sleep(0.2)
    return loss_fn(m, b, g)
r = train(make_net(), NoisyPoints(), collate, slow, cfg(steps=500, save_every=0), {str(tmp_path / 'run')!r})
sys.exit(130 if r.interrupted else 0)
"""
    root = str(Path(__file__).resolve().parents[1])  # `tests` importable in the child
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "go"
    p.send_signal(2)
    assert p.wait(timeout=60) == 130
    ckpt = latest_checkpoint(tmp_path / "run")
    assert 0 < json.loads((ckpt / "state.json").read_text())["step"] < 500


@pytest.mark.parametrize("path, folder", [("/proc/semgen-no/run", True), ("/proc/o.mp4", False)], ids=["folder", "file"])
def test_a_lock_where_nothing_can_be_written_is_one_line(path, folder):
    from semgen_cli.io.lock import hold

    with pytest.raises(InputError, match=r"cannot write there") as e:
        with hold(path, "run folder", folder=folder):
            pass
    assert "\n" not in str(e.value) and path in str(e.value)

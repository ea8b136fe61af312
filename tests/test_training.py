"""The trainer: exact resume, accumulation, EMA, checkpoints on disk, errors, DDP/FSDP2 on gloo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from semgen_cli.errors import ConfigError, InputError, MismatchError
from semgen_cli.reporting import Reporter
from semgen_cli.training import (
    Sample,
    TrainConfig,
    check_run_dir,
    latest_checkpoint,
    load_checkpoint_weights,
    train,
)

# ----------------------------------------------------------------------------- tiny world


class NoisyPoints(torch.utils.data.Dataset):
    """Ten points; each draw adds noise from the per-sample seed (a stand-in for random crops)."""

    takes_seed = True

    def __init__(self, n: int = 10) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 4, generator=g)  # (N, 4)
        self.y = self.x.sum(dim=1, keepdim=True).tanh()  # (N, 1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: Sample) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(key.seed)
        return {"x": self.x[key.index] + 0.1 * torch.randn(4, generator=g), "y": self.y[key.index]}


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class Net(nn.Module):
    """MLP whose forward is the whole loss (as step modules do, so DDP sees one call)."""

    def __init__(self, hidden: int = 16, dropout: float = 0.0, noisy: bool = False) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.blocks = nn.ModuleList([nn.Linear(hidden, hidden)])  # an FSDP unit by default
        self.norm = nn.LayerNorm(4)
        self.noisy = noisy

    def forward(self, x, y, generator):
        if self.noisy:  # randomness from the trainer's generator (timesteps/noise in real steps)
            x = x + 0.05 * torch.randn(x.shape, generator=generator, device=x.device)
        h = self.mlp[1](self.mlp[0](self.norm(x)))
        h = self.mlp[2](h + self.blocks[0](h))
        loss = (self.mlp[3](h) - y).pow(2).mean()
        return loss, {"abs_y": y.abs().mean().item()}


def loss_fn(model, batch, generator):
    return model(batch["x"], batch["y"], generator)


def make_net(hidden: int = 16, **kw) -> Net:
    torch.manual_seed(0)
    return Net(hidden, **kw)


def cfg(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=4, lr=1e-2, ema_decay=0.9, save_every=2, keep_last=0, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


class Recorder(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.advances: list[dict] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    def warn(self, message: str) -> None:
        self.lines.append("warning: " + message)

    def advance(self, task, amount=1.0, **fields):
        self.advances.append({"amount": amount, **fields})


# ----------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("split", [1, 3], ids=["mid-epoch-0", "mid-epoch-1"])
@pytest.mark.parametrize("accum", [1, 2])
def test_resume_is_bit_identical(tmp_path, accum, split):
    """N steps + resume + M steps == N+M steps: losses, weights and EMA, bit for bit. 10 samples
    and batch 4 put both splits mid-epoch; dropout, dataset noise and generator noise all replay."""
    kw = dict(grad_accum=accum, save_every=split)
    a = train(make_net(dropout=0.1, noisy=True), NoisyPoints(), collate, loss_fn, cfg(**kw), tmp_path / "a")
    train(make_net(dropout=0.1, noisy=True), NoisyPoints(), collate, loss_fn, cfg(steps=split, **kw), tmp_path / "b")
    b = train(make_net(dropout=0.1, noisy=True), NoisyPoints(), collate, loss_fn, cfg(**kw), tmp_path / "b", resume=True)
    assert b.resumed_from == split and b.step == a.step == 6
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert sorted(losses(tmp_path / "b")) == [1, 2, 3, 4, 5, 6]
    for which in ("model", "ema"):
        wa, wb = load_checkpoint_weights(tmp_path / "a", which), load_checkpoint_weights(tmp_path / "b", which)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_truncates_metrics_after_the_checkpoint(tmp_path):
    """Steps logged after the last checkpoint (a crash) are dropped and redone, not duplicated."""
    run = tmp_path / "r"
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=4, save_every=2), run)
    straight = losses(run)
    # Simulate a crash after step 3 was logged but before the step-4 checkpoint existed.
    import shutil

    shutil.rmtree(run / "checkpoints" / "step-0000004")
    (run / "checkpoints" / "latest").write_text("step-0000002\n")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 9.0}\n{"step": 6, "lo')  # a line cut by the crash
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=4, save_every=2), run, resume=True)
    assert losses(run) == straight
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_callbacks_do_not_move_the_rngs(tmp_path):
    """A validation callback that samples (uses the RNGs) leaves the training numbers unchanged."""
    seen = []

    def sample(step, ckpt_dir, ema_model):
        torch.randn(100), torch.rand(3)
        seen.append((step, ckpt_dir.name, ema_model.training))
        (ckpt_dir / "sample.txt").write_text("video")

    train(make_net(dropout=0.1, noisy=True), NoisyPoints(), collate, loss_fn, cfg(), tmp_path / "a")
    train(make_net(dropout=0.1, noisy=True), NoisyPoints(), collate, loss_fn, cfg(sample_every=3), tmp_path / "b",
          on_checkpoint=sample)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert seen == [(3, "step-0000003", False), (6, "step-0000006", False)]  # sample steps save too
    assert (tmp_path / "b" / "checkpoints" / "step-0000003" / "state.json").is_file()


def test_interrupt_saves_and_resumes_exactly(tmp_path):
    """Ctrl-C inside a step: the step is rolled back, a checkpoint saved, the hint printed; resuming
    gives the uninterrupted losses."""
    calls = {"n": 0}

    def flaky(model, batch, generator):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return loss_fn(model, batch, generator)

    train(make_net(noisy=True), NoisyPoints(), collate, loss_fn, cfg(steps=5), tmp_path / "a")
    rec = Recorder()
    r = train(make_net(noisy=True), NoisyPoints(), collate, flaky, cfg(steps=5), tmp_path / "b", reporter=rec,
              resume_hint="semgen train-latent data --out b --resume")
    assert r.interrupted and r.step == 2 and r.checkpoint.name == "step-0000002"
    assert any("stopped early at step 2" in x for x in rec.lines)
    assert any(x == "resume with: semgen train-latent data --out b --resume" for x in rec.lines)
    train(make_net(noisy=True), NoisyPoints(), collate, loss_fn, cfg(steps=5), tmp_path / "b", resume=True)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_first_ctrl_c_finishes_the_step_and_saves(tmp_path):
    """SIGINT (Ctrl-C, or torchrun forwarding it) stops cleanly after the current step."""
    import signal

    calls = {"n": 0}

    def ctrl_c_at_step_3(model, batch, generator):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss_fn(model, batch, generator)

    rec = Recorder()
    # a shell started in the background (nohup, `cmd &`, some CI runners) ignores SIGINT; this test
    # is about an interactive run, so it sets Python's default handler and puts back what was there
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        r = train(make_net(), NoisyPoints(), collate, ctrl_c_at_step_3, cfg(steps=6), tmp_path, reporter=rec,
                  resume_hint="semgen fit-compressor --resume")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    finally:
        signal.signal(signal.SIGINT, outer)
    assert r.interrupted and r.step == 3 and r.checkpoint.name == "step-0000003"
    assert (r.checkpoint / "state.json").is_file() and sorted(losses(tmp_path)) == [1, 2, 3]
    assert rec.lines[-1] == "resume with: semgen fit-compressor --resume"


def test_sigint_stops_a_run_started_with_it_ignored(tmp_path):
    """Started with SIGINT ignored (`cmd &` in a script), a `kill -INT` still stops the run
    cleanly after the step, saved; the ignored disposition is put back afterwards."""
    import signal

    outer = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        def ctrl_c(model, batch, generator):
            os.kill(os.getpid(), signal.SIGINT)
            return loss_fn(model, batch, generator)

        r = train(make_net(), NoisyPoints(), collate, ctrl_c, cfg(steps=3), tmp_path)
        assert r.interrupted and r.step == 1 and r.checkpoint.name == "step-0000001"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, outer)


def test_already_finished_run_says_so(tmp_path):
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=2), tmp_path)
    before = (tmp_path / "metrics.jsonl").read_text()
    rec = Recorder()
    r = train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=2), tmp_path, resume=True, reporter=rec)
    assert r.step == 2 and r.loss is None
    assert any("already reached step 2 of 2" in x for x in rec.lines)
    assert (tmp_path / "metrics.jsonl").read_text() == before


# ----------------------------------------------------------------------------- the maths


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    """batch 4 as 2 micro-batches of 2 == batch 4 at once (same samples, mean loss, same update)."""
    a = train(make_net(), NoisyPoints(), collate, loss_fn, cfg(grad_accum=1), tmp_path / "a")
    b = train(make_net(), NoisyPoints(), collate, loss_fn, cfg(grad_accum=2), tmp_path / "b")
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert la.keys() == lb.keys()
    assert torch.allclose(torch.tensor(list(la.values())), torch.tensor(list(lb.values())), rtol=1e-5, atol=1e-7)
    wa, wb = load_checkpoint_weights(a.out_dir, "model"), load_checkpoint_weights(b.out_dir, "model")
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-6) for k in wa)


def test_ema_is_the_exponential_average_of_the_weights(tmp_path):
    d = 0.9
    init = {k: v.clone() for k, v in make_net().state_dict().items()}
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=2, save_every=1, ema_decay=d), tmp_path)
    p1 = load_checkpoint_weights(tmp_path, "model", step=1)
    p2 = load_checkpoint_weights(tmp_path, "model", step=2)
    e1 = load_checkpoint_weights(tmp_path, "ema", step=1)
    e2 = load_checkpoint_weights(tmp_path, "ema", step=2)
    for k in init:
        assert e2[k].dtype == torch.float32
        assert torch.allclose(e1[k], d * init[k] + (1 - d) * p1[k], atol=1e-7)
        assert torch.allclose(e2[k], d * e1[k] + (1 - d) * p2[k], atol=1e-7)
        assert not torch.equal(p2[k], e2[k]) or k.startswith("norm")


def test_warmup_and_cosine_schedule_are_logged(tmp_path):
    c = cfg(steps=6, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1, lr=1.0)
    train(make_net(), NoisyPoints(), collate, loss_fn, c, tmp_path)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    import math

    expected = [0.5, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p / 4)) for p in range(4)]
    assert lrs == pytest.approx(expected)


def test_weight_decay_spares_norms_biases_and_embeddings():
    from semgen_cli.training import _param_groups

    m = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    decay, no_decay = _param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 4  # embedding, linear bias, norm weight and bias


def test_workers_give_the_same_batches(tmp_path):
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=3), tmp_path / "a")
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=3, num_workers=1), tmp_path / "b")
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_bf16_autocast_and_log_every(tmp_path):
    r = train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=5, precision="bf16", log_every=2), tmp_path)
    assert sorted(losses(tmp_path)) == [2, 4, 5]  # the last step is always logged
    assert r.loss is not None and torch.isfinite(torch.tensor(r.loss))
    assert load_checkpoint_weights(tmp_path, "model")["mlp.0.weight"].dtype == torch.float32


def test_plain_datasets_get_int_indices(tmp_path):
    ds = torch.utils.data.TensorDataset(torch.randn(6, 4), torch.randn(6, 1))
    r = train(make_net(), ds, lambda items: {"x": torch.stack([i[0] for i in items]), "y": torch.stack([i[1] for i in items])},
              loss_fn, cfg(steps=2), tmp_path)
    assert r.step == 2 and r.loss is not None


def test_group_by_length_batches_similar_lengths_and_keeps_every_sample():
    from semgen_cli.training import GROUP_BATCHES, group_by_length

    g = torch.Generator().manual_seed(0)
    n, batch = 200, 4
    lengths = [3] * 150 + [48] * 50  # many short clips, few long ones
    perm = torch.randperm(n, generator=g).tolist()
    out = group_by_length(perm, lengths, batch, g)
    assert sorted(out) == list(range(n))
    mixed = sum(len({lengths[i] for i in out[k : k + batch]}) > 1 for k in range(0, n, batch))
    assert mixed <= n // (batch * GROUP_BATCHES) + 1  # at most one mixed batch per chunk (+ the tail)
    plain = sum(len({lengths[i] for i in perm[k : k + batch]}) > 1 for k in range(0, n, batch))
    assert plain > 3 * mixed  # a random order mixes most batches


class LengthPoints(NoisyPoints):
    def __init__(self, n: int = 10) -> None:
        super().__init__(n)
        self.lengths = [1 + (i * 7) % 5 for i in range(n)]


def test_length_grouped_runs_resume_exactly_and_differ_from_plain(tmp_path):
    train(make_net(), LengthPoints(), collate, loss_fn, cfg(steps=6, save_every=3), tmp_path / "a")
    train(make_net(), LengthPoints(), collate, loss_fn, cfg(steps=3, save_every=3), tmp_path / "b")
    train(make_net(), LengthPoints(), collate, loss_fn, cfg(steps=6, save_every=3), tmp_path / "b", resume=True)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=6, save_every=3), tmp_path / "c")
    assert losses(tmp_path / "a") != losses(tmp_path / "c")
    bad = LengthPoints()
    bad.lengths = bad.lengths[:-1]
    with pytest.raises(ValueError, match="lengths has 9 entries for 10 samples"):
        train(make_net(), bad, collate, loss_fn, cfg(steps=1), tmp_path / "d")


# ----------------------------------------------------------------------------- files on disk


def test_run_folder_layout_and_metrics(tmp_path):
    rec = Recorder()
    r = train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=3, save_every=2), tmp_path, reporter=rec)
    ck = tmp_path / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step-0000002", "step-0000003"]
    assert (ck / "latest").read_text().strip() == "step-0000003" and r.checkpoint == ck / "step-0000003"
    assert sorted(p.name for p in (ck / "step-0000003").iterdir()) == [
        "ema.safetensors", "model.safetensors", "optimizer.pt", "state.json"]
    state = json.loads((ck / "step-0000003" / "state.json").read_text())
    assert state["step"] == 3 and (state["epoch"], state["position"]) == (1, 2)  # 12 samples of 10
    assert state["config"]["batch_size"] == 4 and len(state["rng"]) == 1
    torch.load(ck / "step-0000003" / "optimizer.pt", weights_only=True)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [1, 2, 3]
    assert {"step", "loss", "lr", "grad_norm", "samples_per_s", "elapsed_s", "abs_y"} <= rows[0].keys()
    assert len(rec.advances) == 3 and {"loss", "lr", "it/s"} <= rec.advances[0].keys()
    assert any("saved" in x and "step-0000002" in x for x in rec.lines)


def test_keep_last_prunes_but_keeps_callers_files(tmp_path):
    def sample(step, ckpt_dir, ema_model):
        (ckpt_dir / "sample.mp4").write_bytes(b"x")

    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=5, save_every=1, keep_last=2), tmp_path / "a",
          on_checkpoint=sample)
    ck = tmp_path / "a" / "checkpoints"
    assert [p.name for p in sorted(ck.glob("step-*")) if (p / "state.json").exists()] == ["step-0000004", "step-0000005"]
    assert sorted(p.name for p in (ck / "step-0000001").iterdir()) == ["sample.mp4"]  # samples stay
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=5, save_every=1, keep_last=2), tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("step-*")) == ["step-0000004", "step-0000005"]


def test_uncommitted_folders_are_ignored(tmp_path):
    """A step folder without state.json (a crash mid-write) and a leftover .tmp are not checkpoints."""
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=2), tmp_path)
    ck = tmp_path / "checkpoints"
    (ck / "step-0000009").mkdir()
    (ck / "step-0000009" / "model.safetensors").write_bytes(b"half")
    (ck / "step-0000010.tmp").mkdir()
    assert latest_checkpoint(tmp_path) == ck / "step-0000002"
    (ck / "latest").unlink()  # a crash between the folder rename and `latest`
    assert latest_checkpoint(tmp_path) == ck / "step-0000002"
    r = train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=3), tmp_path, resume=True)
    assert r.resumed_from == 2 and r.step == 3
    with pytest.raises(InputError, match="no checkpoint of step 9"):
        load_checkpoint_weights(tmp_path, step=9)


def test_load_checkpoint_weights(tmp_path):
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=2, ema_decay=0.0), tmp_path)
    sd = load_checkpoint_weights(tmp_path, "model")
    make_net().load_state_dict(sd)
    assert torch.equal(load_checkpoint_weights(tmp_path / "checkpoints" / "step-0000002", "model")["norm.weight"],
                       sd["norm.weight"])
    with pytest.raises(InputError, match="ema_decay=0"):
        load_checkpoint_weights(tmp_path, "ema")


# ----------------------------------------------------------------------------- user errors


def test_refuses_a_run_folder_without_resume(tmp_path):
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=1), tmp_path)
    with pytest.raises(ConfigError, match=r"already holds a training run.*--resume.*new --out") as e:
        train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=1), tmp_path)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_nothing_to_resume(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # the step writes config.json first
    with pytest.raises(InputError, match=r"nothing to resume.*drop --resume") as e:
        train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=1), tmp_path, resume=True)
    assert str(tmp_path) in str(e.value)
    assert check_run_dir(tmp_path, resume=False) is None  # config.json alone is a fresh run


def test_checkpoint_of_another_model_is_a_mismatch(tmp_path):
    train(make_net(hidden=8), NoisyPoints(), collate, loss_fn, cfg(steps=1), tmp_path)
    with pytest.raises(MismatchError, match=r"step-0000001 does not fit this model.*shape") as e:
        train(make_net(hidden=16), NoisyPoints(), collate, loss_fn, cfg(steps=2), tmp_path, resume=True)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "bad, flag",
    [(dict(steps=0), "--steps"), (dict(batch_size=6, grad_accum=4), "--batch-size"), (dict(lr=0.0), "--lr"),
     (dict(schedule="step"), "--schedule"), (dict(ema_decay=1.0), "--ema-decay"),
     (dict(precision="fp16"), "--precision"), (dict(betas=(0.9, 1.0)), "--betas"), (dict(grad_clip=-1.0), "--grad-clip")],
)
def test_config_rejects_bad_values(bad, flag):
    with pytest.raises(ConfigError, match=flag):
        TrainConfig(**bad)


def test_config_round_trip_and_unknown_keys():
    c = TrainConfig(steps=5, betas=(0.9, 0.95))
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ConfigError, match="unknown training setting.*learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-4})
    assert c.fingerprint() == TrainConfig(steps=50, betas=(0.9, 0.95), save_every=3).fingerprint()
    assert c.fingerprint() != TrainConfig(steps=5, lr=3e-4).fingerprint()


def test_batch_must_split_over_ranks_and_micro_steps(tmp_path, monkeypatch):
    from semgen_cli.training import _Dist, loop

    monkeypatch.setattr(loop, "_init_distributed", lambda: _Dist(0, 3, 0))
    with pytest.raises(ConfigError, match=r"--batch-size 4.*3 processes"):
        train(make_net(), NoisyPoints(), collate, loss_fn, cfg(), tmp_path)


# ----------------------------------------------------------------------------- distributed

WORKER = textwrap.dedent(
    """
    import os, sys
    from tests.test_training import NoisyPoints, collate, loss_fn, make_net, cfg
    from semgen_cli.training import train
    out = sys.argv[1]
    def sample(step, ckpt_dir, ema_model):  # rank 0 only, with a full EMA copy
        (ckpt_dir / "sample.txt").write_text(str(sum(p.numel() for p in ema_model.parameters())))

    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(sample_every=6), out + "/ddp", on_checkpoint=sample)
    # FSDP2: the blocks and the root sharded; a resume from the gathered checkpoint. Each train()
    # joins and leaves the process group as under torchrun; a new group needs a new port here.
    os.environ["MASTER_PORT"] = sys.argv[2]
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=3), out + "/fsdp", fsdp=True, on_checkpoint=sample)
    os.environ["MASTER_PORT"] = sys.argv[3]
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(), out + "/fsdp", fsdp=True, resume=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_equals_one_process(tmp_path):
    """torchrun-style env (RANK/WORLD_SIZE/LOCAL_RANK), gloo on CPU: per-rank batch 2 of a global 4
    gives the 1-process losses (DDP), and FSDP2 trains, checkpoints and resumes the same way."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    root = str(Path(__file__).resolve().parents[1])  # `tests` importable in the workers
    single = train(make_net(), NoisyPoints(), collate, loss_fn, cfg(), tmp_path / "one")
    ports = [str(_free_port()) for _ in range(3)]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=ports[0], OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path), *ports[1:]], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        for p in procs:
            out, _ = p.communicate(timeout=180)
            assert p.returncode == 0, out[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    one = losses(single.out_dir)
    for run in ("ddp", "fsdp"):
        got = losses(tmp_path / run)
        assert got.keys() == one.keys()
        assert torch.allclose(torch.tensor(list(got.values())), torch.tensor(list(one.values())), rtol=1e-5), run
    w1, w2 = load_checkpoint_weights(tmp_path / "one", "ema"), load_checkpoint_weights(tmp_path / "fsdp", "ema")
    assert all(torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-6) for k in w1)
    assert len(json.loads((tmp_path / "ddp" / "checkpoints" / "step-0000006" / "state.json").read_text())["rng"]) == 2
    n = str(sum(p.numel() for p in make_net().parameters()))
    assert (tmp_path / "ddp" / "checkpoints" / "step-0000006" / "sample.txt").read_text() == n
    assert (tmp_path / "fsdp" / "checkpoints" / "step-0000003" / "sample.txt").read_text() == n

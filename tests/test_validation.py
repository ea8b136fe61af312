"""--val-clips / --val-every / --sample-every / --val-prompts: held-out clips never trained on, a
val_loss at fixed timesteps and noise, samples in both stages, and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.training import Sample, train
from semgen_cli.validation import HeldOutLoss, MonitorConfig, Without, hold_out
from tests.conftest import run_inproc, tiny_data
from tests.test_training import NoisyPoints, cfg, collate, loss_fn, make_net


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """4 toy clips of 4 s and a compressor fitted on them."""
    return tiny_data(tmp_path_factory.mktemp("val"), count=4, compressor_steps=5, batch=2)


@pytest.fixture(scope="module")
def latent(data) -> Path:
    out = data.parent / "lat"
    r = run_inproc("train-latent", str(data), "--compressor", str(data.parent / "comp"), "--preset", "tiny", "--steps", "1",
                   "--batch-size", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def one_line_exit_2(r, *needles: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


def test_hold_out_is_drawn_by_the_seed_and_leaves_clips_to_train():
    records = [{"id": f"c{i}"} for i in range(10)]
    a = hold_out(records, list(range(10)), 3, seed=7)
    assert a == hold_out(records, list(range(10)), 3, seed=7) and len(set(a)) == 3 and a == sorted(a)
    assert any(hold_out(records, list(range(10)), 3, seed=s) != a for s in range(1, 5))
    assert set(hold_out(records, [2, 4, 6], 2, seed=0)) <= {2, 4, 6}
    with pytest.raises(ConfigError, match="--val-clips 3: all of the 3 clips"):
        hold_out(records, [0, 1, 2], 3, seed=0)
    with pytest.raises(ConfigError, match="--val-clips 11: more than the 10 clips .* hold out at most 9"):
        hold_out(records, list(range(10)), 11, seed=0)


class Seen(NoisyPoints):
    def __init__(self):
        super().__init__()
        self.seen: set[int] = set()

    def __getitem__(self, key: Sample):
        self.seen.add(key.index)
        return super().__getitem__(key)


def test_the_training_sampler_never_draws_a_held_out_clip(tmp_path):
    points = Seen()
    held = [2, 7]
    train(make_net(), Without(points, lambda k: k, held), collate, loss_fn, cfg(steps=12), tmp_path)
    assert points.seen == set(range(10)) - set(held)


def test_held_out_loss_is_fixed_and_leaves_training_alone(tmp_path):
    points = NoisyPoints()
    batches = [collate([points[Sample(i, 0)]]) for i in (0, 1)]

    def at_t(model, batch, t, g):  # a loss that depends on t and on the drawn noise
        x = batch["x"] + t * torch.randn(batch["x"].shape, generator=g)
        return model(x, batch["y"], None)[0]

    val = HeldOutLoss(batches, at_t, every=2, seed=5)
    net = make_net()
    assert val(1, net) == {} and val(2, net) == val(4, net)  # same weights, same noise: the same value
    train(make_net(noisy=True), NoisyPoints(), collate, loss_fn, cfg(), tmp_path / "a")
    train(make_net(noisy=True), NoisyPoints(), collate, loss_fn, cfg(), tmp_path / "b", validate=val)
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    plain = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4, 6]
    assert [r["loss"] for r in rows] == [r["loss"] for r in plain]  # no RNG moved, no weight changed


def test_monitor_config_refuses_what_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match="--val-every 5: needs clips to validate on; pass --val-clips N"):
        MonitorConfig(val_every=5)
    with pytest.raises(ConfigError, match="--sample-every 2: nothing to render; pass --val-clips N"):
        MonitorConfig().check_sampling(2, "train-latent")
    MonitorConfig(val_clips=1).check_sampling(2, "train-latent")
    with pytest.raises(InputError, match="--val-prompts .*missing.txt: no such file"):
        MonitorConfig(val_prompts=str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("\n# a comment\n\n")
    with pytest.raises(InputError, match="--val-prompts .*empty.txt: no prompts"):
        MonitorConfig(val_prompts=str(tmp_path / "empty.txt"))
    (tmp_path / "p.txt").write_text("a red circle\n\n# skip\n a blue square \n")
    m = MonitorConfig(val_prompts=str(tmp_path / "p.txt"))
    assert m.prompts == ["a red circle", "a blue square"]
    m.check_sampling(3, "train-semantic")


def test_error_paths_are_one_line_exit_2_and_write_nothing(data, latent, tmp_path):
    comp = str(data.parent / "comp")
    lat = ["train-latent", str(data), "--compressor", comp, "--preset", "tiny", "--steps", "1", "--batch-size", "2"]
    sem = ["train-semantic", str(data), "--latent-run", str(latent), "--preset", "tiny", "--steps", "1", "--batch-size", "2"]
    out = tmp_path / "run"
    (tmp_path / "empty.txt").write_text("\n")
    cases = [
        (lat + ["--val-clips", "4"], "--val-clips 4: all of the 4 clips"),
        (lat + ["--val-clips", "9"], "--val-clips 9: more than the 4 clips"),
        (lat + ["--sample-every", "1"], "--sample-every 1: nothing to render"),
        (lat + ["--val-every", "1"], "--val-every 1: needs clips"),
        (sem + ["--val-clips", "5"], "--val-clips 5: more than the 4 clips"),
        (sem + ["--sample-every", "1"], "--sample-every 1: nothing to render; pass --val-clips N (their captions) or --val-prompts FILE"),
        (sem + ["--val-prompts", str(tmp_path / "nope.txt"), "--sample-every", "1"], "nope.txt: no such file"),
        (sem + ["--val-prompts", str(tmp_path / "empty.txt"), "--sample-every", "1"], "empty.txt: no prompts"),
    ]
    for args, needle in cases:
        one_line_exit_2(run_inproc(*args, "--out", str(out)), needle)
        assert not out.exists(), args


def test_resume_holds_out_the_same_clips_or_refuses(data, tmp_path):
    comp = str(data.parent / "comp")
    base = ["train-latent", str(data), "--compressor", comp, "--preset", "tiny", "--batch-size", "2", "--save-every", "1",
            "--seed", "2", "--out", str(tmp_path / "run")]
    assert run_inproc(*base, "--steps", "1", "--val-clips", "2", "--val-every", "1").returncode == 0
    config = (tmp_path / "run" / "config.json").read_text()
    held = json.loads(config)["validation"]["clips"]
    assert len(held) == 2
    one_line_exit_2(run_inproc(*base, "--steps", "2", "--val-clips", "1", "--resume"), "held out 2 clip(s)", "pass the same --val-clips")
    assert (tmp_path / "run" / "config.json").read_text() == config
    r = run_inproc(*base, "--steps", "2", "--val-clips", "2", "--val-every", "1", "--resume")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["validation"]["clips"] == held
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [1, 2]


@pytest.mark.slow
def test_train_semantic_samples_prompts_and_logs_val_loss(data, latent, tmp_path):
    from semgen_cli.io.video import read_metadata

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left on a black background\na blue square standing still on a gray background\n")
    out = tmp_path / "sem"
    r = run_inproc("train-semantic", str(data), "--latent-run", str(latent), "--preset", "tiny", "--batch-size", "2", "--steps", "2",
                   "--val-clips", "1", "--val-every", "1", "--val-prompts", str(prompts), "--sample-every", "2", "--sample-steps", "2",
                   "--report-to", "tensorboard", "--out", str(out))
    assert r.returncode == 0, r.stderr
    videos = sorted((out / "samples" / "step-0000002").glob("*.mp4"))
    assert [v.name for v in videos] == ["prompt-000.mp4", "prompt-001.mp4"]
    assert read_metadata(videos[1])["prompt"] == "a blue square standing still on a gray background"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [1, 2] and any("sample_seconds" in r for r in rows)
    assert list((out / "tracking" / "tensorboard").glob("events.out.tfevents*"))


def test_held_out_losses_are_the_trainers_flow_loss():
    """Both held-out losses are `flow.flow_loss` (the trainers' objective) at the given t and noise:
    the same value as the velocity MSE written out (masked to the real frames in stage 2)."""
    from types import SimpleNamespace

    from semgen_cli.flow import interpolate, velocity_target
    from semgen_cli.validation import latent_val_loss, semantic_val_loss

    torch.manual_seed(0)
    w = torch.randn(4, 4)

    def dit(x, t, text=None, text_mask=None, token_mask=None, **_):
        return torch.einsum("bc...,cd->bd...", x, w) * (1 - t.view(-1, 1, 1, 1, 1)) + text.mean()

    t = torch.tensor([0.3, 0.8])
    z0, text = torch.randn(2, 4, 5, 2, 2), torch.randn(2, 3, 8)
    latent = SimpleNamespace(dit=dit, condition="none")
    got = latent_val_loss(latent, {"latents": z0, "text": text}, t, torch.Generator().manual_seed(1))
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, (dit(interpolate(z0, eps, t), t, text) - velocity_target(z0, eps)).square().mean())

    fmask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    semantic = SimpleNamespace(dit=dit, targets=lambda z: z)
    batch = {"semantic": z0, "text": text, "text_mask": torch.ones(2, 3, dtype=torch.bool), "frame_mask": fmask}
    got = semantic_val_loss(semantic, batch, t, torch.Generator().manual_seed(1))
    err = (dit(interpolate(z0, eps, t), t, text) - velocity_target(z0, eps)).square()
    m = fmask[:, None, :, None, None].float().expand_as(err)
    assert torch.equal(got, (err * m).sum() / m.sum()) and not torch.equal(got, err.mean())

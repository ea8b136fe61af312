"""train-latent's window rule (every window holds a semantic frame) and the compressor's
statistics that follow joint training (paper §3.2, §3.4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from semgen_cli.errors import ConfigError
from semgen_cli.models import DiT, preset
from semgen_cli.models.attention import window_plan
from semgen_cli.models.compressor import Compressor, CompressorConfig
from semgen_cli.geometry import ClipGeometry
from semgen_cli.models.dit import semantic_times_from_fps
from semgen_cli.stage1_compressor import CompressorStats
from semgen_cli.steps.train_latent import LatentStep, TrainLatentConfig
from semgen_cli.windows import empty_windows, resolve_window, smallest_window, window_gap
from tests.conftest import run_inproc as run_cli
from tests.conftest import tiny_data

# ----------------------------------------------------------------------------- the window rule


def _empty_in_plan(frames: int, fps: float, sfps: float, window: int) -> int:
    """Windows without a semantic token, counted on the DiT's own plans (video tokens: 1 per frame)."""
    g = ClipGeometry(fps, sfps)
    T = g.latent_frames(frames / fps)
    sem = semantic_times_from_fps(g.semantic_tokens(frames / fps), sfps, fps / 4).round().clamp(0, T - 1).long()
    slots = torch.cat([torch.arange(T), sem])
    is_sem = torch.cat([torch.zeros(T, dtype=torch.bool), torch.ones(len(sem), dtype=torch.bool)])
    empty = 0
    for shift in (0, window // 2):
        plan = window_plan(slots, T, window, shift)
        flags, start = is_sem[plan.perm], 0
        for n, length in plan.groups:
            for _ in range(n):
                empty += not bool(flags[start : start + length].any())
                start += length
    return empty


@pytest.mark.parametrize("fps, frames", [(16, 960), (16, 333), (8, 480), (24, 1440)])
def test_empty_windows_agrees_with_the_dit_plan(fps, frames):
    for window in (4, 7, 10):
        assert empty_windows(frames, ClipGeometry(fps, 1.6), window) == _empty_in_plan(frames, fps, 1.6, window)


def test_default_rates_need_a_wider_window_than_4():
    # extract's defaults (16 fps, 1.6 semantic fps): a semantic frame every 5 latent frames
    g16, g8 = ClipGeometry(16, 1.6), ClipGeometry(8, 1.6)
    assert empty_windows(60 * 16, g16, 4) > 0
    w = smallest_window(g16, 5.0)
    assert w == 10 and window_gap(g16, w, 5.0) is None and window_gap(g16, w - 1, 5.0) is not None
    assert all(empty_windows(f, g16, w) == 0 for f in range(80, 16 * 61, 37))
    # toy rates (8 fps): every 2.5 latent frames
    assert smallest_window(g8, 4.0) == 8 and window_gap(g8, 4, 4.0) == (4.25, 1)


def test_resolve_window_keeps_a_recorded_window_and_refuses_an_empty_one():
    cfg = TrainLatentConfig("d", compressor="c", window=4)
    assert resolve_window(cfg, ClipGeometry(8, 1.6), 4.0, recorded=4) == 4  # the run's DiT was trained with it
    with pytest.raises(ConfigError, match="smallest window that works is 8"):
        resolve_window(cfg, ClipGeometry(8, 1.6), 4.0, recorded=None)
    assert resolve_window(TrainLatentConfig("d", compressor="c"), ClipGeometry(8, 1.6), 4.0, recorded=None) == 8
    assert resolve_window(TrainLatentConfig("d", compressor="c"), ClipGeometry(8, 1.6), 4.0, recorded=6) == 6
    assert resolve_window(TrainLatentConfig("d", condition="none"), ClipGeometry(8, 1.6), 4.0, recorded=None) == 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Tiny toy data: 4 clips of 4 s at 8 fps (the shared extraction), tiny components, and a compressor."""
    return tiny_data(tmp_path_factory.mktemp("faithful"), count=4, compressor_steps=10, batch=4)


def test_train_latent_refuses_a_window_with_empty_windows(data, tmp_path):
    out = tmp_path / "lat"
    r = run_cli("train-latent", str(data), "--compressor", str(data.parent / "comp"), "--preset", "tiny", "--steps", "1",
                "--batch-size", "2", "--window", "4", "--out", str(out))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "--window 4" in r.stderr and "smallest window that works is 8" in r.stderr
    assert not out.exists()  # nothing written


# ----------------------------------------------------------------------------- compressor statistics


def _latent_run(data, out, *flags):
    r = run_cli("train-latent", str(data), "--compressor", str(data.parent / "comp"), "--preset", "tiny", "--batch-size", "2",
                "--steps", "3", "--save-every", "2", "--lr", "1e-2", *flags, "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
def test_joint_run_stores_the_statistics_of_its_ema_compressor(data, tmp_path):
    from semgen_cli.io.shards import Dataset
    from semgen_cli.runs import split_state
    from semgen_cli.runs import CompressorRun
    from semgen_cli.tokens import posterior_stats
    from semgen_cli.training import load_checkpoint_weights

    run = _latent_run(data, tmp_path / "joint")
    assert json.loads((run / "config.json").read_text())["dit"]["window"] == 8  # derived from the rates
    fitted = CompressorRun.from_dir(data.parent / "comp", "--compressor").load()
    for which in ("ema", "model"):
        state = split_state(load_checkpoint_weights(run, which), "compressor")
        assert not torch.equal(state["stats_mean"], fitted.stats_mean)  # recomputed, not fit-compressor's
    ema = Compressor(fitted.config)
    ema.load_state_dict(split_state(load_checkpoint_weights(run, "ema"), "compressor"))
    ema.eval()
    mean, std = posterior_stats(ema, Dataset(str(data)), "semantic")
    torch.testing.assert_close(ema.stats_mean, mean)
    torch.testing.assert_close(ema.stats_std, std)
    # the plans stage 2 learns: normalised posterior means of the data, ~N(0, 1) per channel
    ds = Dataset(str(data))
    z = torch.cat([ema.normalize(ema(ds.load(i, ["semantic"])["semantic"].float())[1]).reshape(-1, 8) for i in range(len(ds))])
    assert z.mean(0).abs().max() < 1e-3 and (z.std(0, unbiased=False) - 1).abs().max() < 1e-3


@pytest.mark.slow
def test_frozen_compressor_stays_in_eval_mode_and_keeps_its_statistics(data, tmp_path):
    from semgen_cli.runs import split_state
    from semgen_cli.runs import CompressorRun
    from semgen_cli.training import load_checkpoint_weights

    run = _latent_run(data, tmp_path / "frozen", "--freeze-compressor")
    kls = [json.loads(line)["kl"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert kls and all(k == 0.0 for k in kls)  # no sampling, no KL
    fitted = CompressorRun.from_dir(data.parent / "comp", "--compressor").load().state_dict()
    state = split_state(load_checkpoint_weights(run, "ema"), "compressor")
    assert all(torch.equal(state[k], fitted[k]) for k in fitted)


def test_latent_step_train_keeps_a_frozen_compressor_in_eval():
    comp = Compressor(CompressorConfig(in_dim=6, dim=3, hidden=8))
    for freeze in (True, False):
        step = LatentStep(DiT(preset("tiny", in_channels=4, text_dim=16, semantic_dim=3)), comp,
                          TrainLatentConfig("d", compressor="c", freeze_compressor=freeze), None, 1.0)
        step.train()
        assert step.compressor.training is (not freeze) and step.dit.training


class _Data:
    """A stand-in for a shard Dataset: `load(i, ["semantic"])`."""

    def __init__(self, feats):
        self.feats = feats

    def __len__(self):
        return len(self.feats)

    def load(self, i, fields):
        return {"semantic": self.feats[i]}


def test_compressor_stats_keep_the_dit_response_to_the_features():
    """New statistics re-express the DiT's input projection: its output for the same features is
    unchanged, for the model and for the EMA state alike."""
    torch.manual_seed(0)
    comp = Compressor(CompressorConfig(in_dim=6, dim=3, hidden=8))
    comp.set_stats(torch.tensor([5.0, -2.0, 0.5]), torch.tensor([3.0, 0.2, 1.5]))  # stale statistics
    dit = DiT(preset("tiny", in_channels=4, text_dim=16, semantic_dim=3)).eval()
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.3)
    step = LatentStep(dit, comp, TrainLatentConfig("d", compressor="c"), None, 1.0).eval()
    feats = [torch.randn(2, 2, 2, 6) * 4 + 1 for _ in range(3)]
    ema = {k: v.detach().clone() for k, v in step.state_dict().items()}
    x, t, text = torch.randn(1, 4, 4, 4, 4), torch.rand(1), torch.randn(1, 3, 16)

    def out(model):
        with torch.no_grad():
            sem = model.compressor.normalize(model.compressor(feats[0])[1])[None]
            return model.dit(x, t, text, semantic=sem, semantic_sigma=torch.zeros(1))

    before = out(step)
    CompressorStats(_Data(feats), "semantic")(step, ema)
    torch.testing.assert_close(out(step), before, atol=1e-4, rtol=1e-4)
    z = torch.cat([step.compressor.normalize(step.compressor(f)[1]).reshape(-1, 3) for f in feats]).detach()
    assert z.mean(0).abs().max() < 1e-4 and (z.std(0, unbiased=False) - 1).abs().max() < 1e-4
    for k in ("compressor.stats_mean", "compressor.stats_std", "dit.semantic_embed.weight", "dit.semantic_embed.bias"):
        torch.testing.assert_close(ema[k], step.state_dict()[k])

"""fit-compressor, train-latent and train-semantic on tiny shards: outputs, exact resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from semgen_cli.errors import ConfigError
from tests.conftest import run_inproc as run_cli


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Tiny toy data: 4 clips of 4 s at 8 fps, tiny components."""
    root = tmp_path_factory.mktemp("stages")
    r = run_cli("toy-data", str(root / "videos"), "--count", "4", "--seconds", "4", "--seed", "5")
    assert r.returncode == 0, r.stderr
    r = run_cli("extract", str(root / "videos"), "--out", str(root / "data"), "--fps", "8", "--num-workers", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    return root / "data"


@pytest.fixture(scope="module")
def compressor(data) -> Path:
    out = data.parent / "comp"
    r = run_cli("fit-compressor", str(data), "--out", str(out), "--steps", "10", "--batch-size", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.fixture(scope="module")
def latent(data, compressor) -> Path:
    out = data.parent / "lat"
    r = run_cli("train-latent", str(data), "--compressor", str(compressor), "--preset", "tiny", "--steps", "2", "--batch-size", "2", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def test_fit_compressor_writes_weights_and_stats(compressor):
    from semgen_cli.runs import CompressorRun

    run = CompressorRun.from_dir(compressor, "--compressor")
    assert run.load().config.dim == 8
    assert run.compressor["dim"] == 8 and run.fingerprint.startswith("compressor:")
    assert len(run.stats["mean"]) == 8 and all(s > 0 for s in run.stats["std"])
    assert "fingerprint" in run.components["semantic"]


def test_fit_compressor_dim_none_only_measures(data, tmp_path):
    r = run_cli("fit-compressor", str(data), "--dim", "none", "--out", str(tmp_path / "none"))
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "none" / "config.json").read_text())
    assert cfg["compressor"]["dim"] is None and not (tmp_path / "none" / "checkpoints").exists()


def test_fit_compressor_bad_dim(data, tmp_path):
    r = run_cli("fit-compressor", str(data), "--dim", "eight", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--dim" in r.stderr


@pytest.mark.parametrize("attention", ["full", "swin"])
def test_train_latent_resume_is_exact(data, compressor, tmp_path, attention):
    common = ["train-latent", str(data), "--compressor", str(compressor), "--preset", "tiny", "--batch-size", "2", "--attention", attention, "--save-every", "2", "--seed", "3"]
    assert run_cli(*common, "--steps", "4", "--out", str(tmp_path / "a")).returncode == 0
    assert run_cli(*common, "--steps", "2", "--out", str(tmp_path / "b")).returncode == 0
    r = run_cli(*common, "--steps", "4", "--out", str(tmp_path / "b"), "--resume")
    assert r.returncode == 0, r.stderr
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_train_latent_baselines_and_vae_condition(data, tmp_path):
    base = ["--preset", "tiny", "--batch-size", "2", "--steps", "1"]
    r = run_cli("train-latent", str(data), "--condition", "none", "--attention", "full", *base, "--out", str(tmp_path / "ct"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ct" / "config.json").read_text())["dit"]["semantic_dim"] == 0
    assert run_cli("fit-compressor", str(data), "--features", "vae", "--steps", "2", "--out", str(tmp_path / "vc")).returncode == 0
    r = run_cli("train-latent", str(data), "--condition", "vae", "--compressor", str(tmp_path / "vc"), *base, "--out", str(tmp_path / "v"))
    assert r.returncode == 0, r.stderr


def test_train_latent_compressor_joint_vs_frozen(data, compressor, tmp_path):
    from semgen_cli.runs import CompressorRun, split_state
    from semgen_cli.training import load_checkpoint_weights

    start = CompressorRun.from_dir(compressor, "--compressor").load().state_dict()
    for flag, changed in (([], True), (["--freeze-compressor"], False)):
        out = tmp_path / ("frozen" if flag else "joint")
        r = run_cli("train-latent", str(data), "--compressor", str(compressor), "--preset", "tiny", "--batch-size", "2", "--steps", "2", "--lr", "1e-2", *flag, "--out", str(out))
        assert r.returncode == 0, r.stderr
        after = split_state(load_checkpoint_weights(out, "model"), "compressor")
        moved = any(not torch.equal(after[k], start[k]) for k in start if k in after and "stats" not in k)
        assert moved == changed


def test_train_latent_errors(data, compressor, tmp_path):
    from semgen_cli.steps.train_latent import TrainLatentConfig

    with pytest.raises(ConfigError, match="--compressor is required"):
        TrainLatentConfig(data=str(data))
    with pytest.raises(ConfigError, match="--condition"):
        TrainLatentConfig(data=str(data), compressor="c", condition="text")
    # missing index
    (tmp_path / "half").mkdir()
    r = run_cli("train-latent", str(tmp_path / "half"), "--compressor", str(compressor), "--preset", "tiny", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "index.json: missing" in r.stderr
    # a checkpoint of another preset
    out = tmp_path / "run"
    assert run_cli("train-latent", str(data), "--compressor", str(compressor), "--preset", "tiny", "--steps", "1", "--batch-size", "2", "--out", str(out)).returncode == 0
    r = run_cli("train-latent", str(data), "--compressor", str(compressor), "--preset", "toy", "--steps", "2", "--batch-size", "2", "--out", str(out), "--resume")
    assert r.returncode == 2 and "different dit" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # without --resume a finished run is not overwritten
    r = run_cli("train-latent", str(data), "--compressor", str(compressor), "--preset", "tiny", "--steps", "1", "--out", str(out))
    assert r.returncode == 2 and "--resume" in r.stderr


def test_motion_weights_favour_what_moves():
    from semgen_cli.flow import motion_weights

    z = torch.zeros(2, 4, 5, 6, 6)
    z[:, :, :, 0, 0] = 3.0  # a fixed pattern (like a VAE's border) never moves
    for t in range(5):  # sample 0: a blob moving right one position per frame
        z[0, :, t, 3, t] = 1.0
    w = motion_weights(z, alpha=2.0)
    assert w.shape == (2, 1, 5, 6, 6)
    assert torch.all(w[1] == 1) and torch.all(w[:, :, :, 0, 0] == 1)  # still sample, still pattern
    assert torch.all(w[0, 0, 1:4, 3, 1:4].diagonal(dim1=0, dim2=1) > 1)  # the blob where it is
    assert w[0, 0, 0, 3, 0] > 1 and w[0, 0, 1, 3, 0] > 1  # and where it left
    assert w[0, 0, 2, 5, 5] == 1
    assert torch.all(motion_weights(torch.zeros(1, 4, 3, 2, 2), 5.0) == 1)  # nothing moves: plain MSE
    assert torch.all(motion_weights(z[:, :, :1], 2.0) == 1)  # one frame


def test_train_latent_motion_weight(data, compressor, tmp_path):
    from semgen_cli.steps.train_latent import TrainLatentConfig

    common = ["train-latent", str(data), "--compressor", str(compressor), "--preset", "tiny", "--batch-size", "2", "--steps", "2", "--seed", "3"]
    assert run_cli(*common, "--out", str(tmp_path / "plain")).returncode == 0
    r = run_cli(*common, "--motion-weight", "4", "--out", str(tmp_path / "w"))
    assert r.returncode == 0, r.stderr
    plain = [json.loads(x) for x in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    weighted = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert "weighted_mse" not in plain[0] and plain[0]["mse"] == weighted[0]["mse"]  # same batch, same model at step 1
    assert weighted[0]["weighted_mse"] != weighted[0]["mse"]
    assert json.loads((tmp_path / "w" / "config.json").read_text())["settings"]["motion_weight"] == 4.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--motion-weight"):
            TrainLatentConfig(data=str(data), compressor="c", motion_weight=bad)
    r = run_cli(*common, "--motion-weight", "-1", "--out", str(tmp_path / "bad"))
    assert r.returncode == 2 and "--motion-weight" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_shards_from_a_different_encoder_than_the_compressor(data, compressor, tmp_path):
    cfg = json.loads((compressor / "config.json").read_text())
    cfg["data"]["components"]["semantic"]["fingerprint"] = "qwen2.5-vl:000000000000"
    other = tmp_path / "other-comp"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(cfg))
    (other / "compressor.safetensors").write_bytes((compressor / "compressor.safetensors").read_bytes())
    r = run_cli("train-latent", str(data), "--compressor", str(other), "--preset", "tiny", "--steps", "1", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "fit the compressor on this data" in r.stderr


def test_corrupted_shard_is_a_clear_error(data, compressor, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    shard = next(bad.glob("shard-*.safetensors"))
    shard.write_bytes(b"\x00" * 64)
    r = run_cli("train-latent", str(bad), "--compressor", str(compressor), "--preset", "tiny", "--steps", "1", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "shard-00000.safetensors" in r.stderr and "inspect" in r.stderr


def test_window_alignment_keeps_semantic_positions_fixed():
    from fractions import Fraction

    from semgen_cli.geometry import ClipGeometry

    assert ClipGeometry(8, 1.6).latents_per_token == Fraction(5, 2)
    assert ClipGeometry(16, 1.6).latents_per_token == Fraction(5)
    assert ClipGeometry(8, 1.6).latent_frames(4) == 9 and ClipGeometry(8, 1.6).semantic_tokens(4) == 3
    ltx = ClipGeometry(8, 1.6, temporal_stride=8)  # an LTX-Video VAE: half the latent frames, each token spans half as many
    assert ltx.latent_frames(4) == 5 and ltx.latents_per_token == Fraction(5, 4) and ltx.period == 5


def test_train_semantic_resume_is_exact(data, latent, tmp_path):
    common = ["train-semantic", str(data), "--latent-run", str(latent), "--preset", "tiny", "--batch-size", "2", "--save-every", "2"]
    assert run_cli(*common, "--steps", "4", "--out", str(tmp_path / "a")).returncode == 0
    assert run_cli(*common, "--steps", "2", "--out", str(tmp_path / "b")).returncode == 0
    r = run_cli(*common, "--steps", "4", "--out", str(tmp_path / "b"), "--resume")
    assert r.returncode == 0, r.stderr
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["dit"]["patch"] == [1, 1, 1] and cfg["latent_run"]["compressor_fingerprint"].startswith("compressor:")


def test_train_latent_init_from_run_fine_tunes_its_dit(data, compressor, latent, tmp_path):
    """--init RUN loads a train-latent run's EMA DiT (fine-tuning, e.g. after a VAE change);
    with --resume the checkpoint, not the init run, supplies the weights."""
    import shutil

    from semgen_cli.models.dit import DiT, DiTConfig
    from semgen_cli.runs import CompressorRun, LatentRun, split_state
    from semgen_cli.training import load_checkpoint_weights, load_sampling_weights

    comp_run = CompressorRun.from_dir(compressor, "--compressor")
    comp = comp_run.load()
    cfg = json.loads((latent / "config.json").read_text())
    dit = DiT(DiTConfig.from_dict(cfg["dit"]))
    LatentRun.from_dir(latent, "--init").init_weights(dit, comp_run.fingerprint, comp, "semantic")
    ema = load_checkpoint_weights(latent, "ema")
    for module, prefix in ((dit, "dit"), (comp, "compressor")):  # the fixture trained its compressor too
        want = split_state(ema, prefix)
        for k, v in module.state_dict().items():
            torch.testing.assert_close(v, want[k], rtol=0, atol=0)

    common = ["train-latent", str(data), "--compressor", str(compressor), "--preset", "tiny", "--batch-size", "2"]
    init = tmp_path / "init"
    shutil.copytree(latent, init)
    r = run_cli(*common, "--steps", "2", "--init", str(init), "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "b" / "config.json").read_text())["settings"]["init"] == str(init)
    fresh = run_cli(*common, "--steps", "2", "--out", str(tmp_path / "c"))
    assert fresh.returncode == 0 and losses(tmp_path / "b")[1] != losses(tmp_path / "c")[1]
    shutil.rmtree(init)  # resuming must not need the init run any more
    before = load_sampling_weights(tmp_path / "b")
    r = run_cli(*common, "--steps", "3", "--init", str(init), "--out", str(tmp_path / "b"), "--resume")
    assert r.returncode == 0, r.stderr
    assert set(losses(tmp_path / "b")) == {1, 2, 3} and set(before) == set(load_sampling_weights(tmp_path / "b"))


def test_train_latent_init_errors(data, compressor, latent, tmp_path):
    common = ["train-latent", str(data), "--compressor", str(compressor), "--batch-size", "2", "--steps", "1"]
    r = run_cli(*common, "--preset", "toy", "--init", str(latent), "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "another DiT (preset tiny" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli(*common, "--preset", "tiny", "--attention", "full", "--init", str(latent), "--out", str(tmp_path / "a2"))
    assert r.returncode == 2 and "swin attention" in r.stderr
    r = run_cli(*common, "--preset", "tiny", "--init", str(compressor), "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "--init" in r.stderr and "fit-compressor" in r.stderr
    r = run_cli(*common, "--preset", "tiny", "--init", str(tmp_path / "nope"), "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "no such run folder" in r.stderr
    other = tmp_path / "comp2"  # a different compressor: its tokens mean something else
    assert run_cli("fit-compressor", str(data), "--out", str(other), "--steps", "3", "--batch-size", "4", "--seed", "9").returncode == 0
    r = run_cli("train-latent", str(data), "--compressor", str(other), "--preset", "tiny", "--batch-size", "2", "--steps", "1",
                "--init", str(latent), "--out", str(tmp_path / "d"))
    assert r.returncode == 2 and "started from compressor" in r.stderr
    for name in ("a", "a2", "b", "c", "d"):
        assert not (tmp_path / name / "checkpoints").exists()


def test_train_latent_init_run_without_compressor_reuses_the_runs_compressor(data, compressor, latent, tmp_path):
    """A bundle keeps the runs, not the fit-compressor folder: --init RUN alone fine-tunes with the
    compressor RUN ended with, recorded under the fit-compressor run it came from, so `--compressor`
    of that fit-compressor run and stage 2 accept the new run as the same lineage; a resume needs
    neither folder."""
    import shutil

    from semgen_cli.runs import split_state
    from semgen_cli.training import load_checkpoint_weights

    init = tmp_path / "init"
    shutil.copytree(latent, init)
    common = ["train-latent", str(data), "--preset", "tiny", "--batch-size", "2", "--freeze-compressor"]
    r = run_cli(*common, "--steps", "2", "--init", str(init), "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    before, after = (json.loads((d / "config.json").read_text()) for d in (latent, tmp_path / "b"))
    assert after["compressor_source"] == before["compressor_source"] and after["compressor"] == before["compressor"]
    want = split_state(load_checkpoint_weights(latent, "ema"), "compressor")
    got = split_state(load_checkpoint_weights(tmp_path / "b", "model"), "compressor")
    for k, v in want.items():  # frozen: the fine-tune's compressor is exactly the one the init run ended with
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    r = run_cli("train-latent", str(data), "--compressor", str(compressor), "--preset", "tiny", "--steps", "1", "--batch-size", "2",
                "--init", str(tmp_path / "b"), "--out", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    r = run_cli("train-semantic", str(data), "--latent-run", str(tmp_path / "b"), "--preset", "tiny", "--steps", "1",
                "--batch-size", "2", "--out", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    shutil.rmtree(init)
    r = run_cli(*common, "--steps", "3", "--init", str(init), "--out", str(tmp_path / "b"), "--resume")
    assert r.returncode == 0, r.stderr
    assert set(losses(tmp_path / "b")) == {1, 2, 3}


def test_train_latent_init_run_reads_its_weights_once(data, latent, tmp_path, monkeypatch):
    """--init RUN without --compressor: the compressor and the DiT come from the same weights,
    read from disk once (a Wan-sized run is gigabytes); the DiT still starts from RUN's EMA."""
    import semgen_cli.training as training
    from semgen_cli.runs import split_state
    from semgen_cli.steps.train_latent import TrainLatentConfig, build_dit, train_latent

    reads = []
    real = training.load_sampling_weights
    monkeypatch.setattr(training, "load_sampling_weights", lambda run: reads.append(str(run)) or real(run))
    built = []  # the DiT's weights as build_dit returns them, before any step

    def build(*args, **kwargs):
        dit = build_dit(*args, **kwargs)
        built.append({k: v.clone() for k, v in dit.state_dict().items()})
        return dit

    monkeypatch.setattr("semgen_cli.steps.train_latent.build_dit", build)
    train_latent(TrainLatentConfig(str(data), out=str(tmp_path / "b"), preset="tiny", init=str(latent), freeze_compressor=True),
                 training.TrainConfig(steps=1, batch_size=2))
    assert reads == [str(latent)]
    want = split_state(real(latent), "dit")
    assert len(built) == 1 and set(built[0]) == set(want)
    for k, v in built[0].items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)


def test_train_latent_init_run_without_compressor_errors(data, tmp_path):
    base = ["--preset", "tiny", "--steps", "1", "--batch-size", "2"]
    assert run_cli("train-latent", str(data), "--condition", "none", *base, "--out", str(tmp_path / "ct")).returncode == 0
    r = run_cli("train-latent", str(data), *base, "--init", str(tmp_path / "ct"), "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "trained without a compressor" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("train-latent", str(data), *base, "--init", str(tmp_path / "nope"), "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "no such run folder" in r.stderr
    r = run_cli("train-latent", str(data), *base, "--init", "wan:" + str(tmp_path / "nope"), "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "--compressor is required" in r.stderr
    for name in ("a", "b", "c"):
        assert not (tmp_path / name / "checkpoints").exists()


def test_train_semantic_init_starts_from_another_runs_weights(data, latent, tmp_path):
    """--init loads the other run's EMA DiT weights (a fine-tune with a fresh schedule)."""
    from semgen_cli.models.dit import DiT, DiTConfig
    from semgen_cli.runs import LatentRun, SemanticRun, split_state
    from semgen_cli.training import load_checkpoint_weights

    common = ["train-semantic", str(data), "--latent-run", str(latent), "--preset", "tiny", "--batch-size", "2"]
    assert run_cli(*common, "--steps", "3", "--out", str(tmp_path / "a")).returncode == 0
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    _, fp = LatentRun.from_dir(latent, "--latent-run").load_compressor()
    dit = DiT(DiTConfig.from_dict(cfg["dit"]))
    SemanticRun.from_dir(tmp_path / "a", "--init").init_weights(dit, fp)
    want = split_state(load_checkpoint_weights(tmp_path / "a", "ema"), "dit")
    for k, v in dit.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)

    r = run_cli(*common, "--steps", "2", "--init", str(tmp_path / "a"), "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "b" / "config.json").read_text())["settings"]["init"] == str(tmp_path / "a")
    fresh = run_cli(*common, "--steps", "2", "--out", str(tmp_path / "c"))
    assert fresh.returncode == 0 and losses(tmp_path / "b")[1] != losses(tmp_path / "c")[1]


def test_train_semantic_init_errors(data, latent, tmp_path):
    common = ["train-semantic", str(data), "--latent-run", str(latent), "--batch-size", "2", "--steps", "1"]
    assert run_cli(*common, "--preset", "tiny", "--out", str(tmp_path / "a")).returncode == 0
    r = run_cli(*common, "--preset", "toy", "--init", str(tmp_path / "a"), "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "another DiT (preset tiny)" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli(*common, "--preset", "tiny", "--init", str(latent), "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "--init" in r.stderr and "train-latent" in r.stderr
    r = run_cli(*common, "--preset", "tiny", "--init", str(tmp_path / "nope"), "--out", str(tmp_path / "d"))
    assert r.returncode == 2 and "no such run folder" in r.stderr
    assert not (tmp_path / "d" / "checkpoints").exists()


def test_train_semantic_padding_is_masked():
    """A clip's loss does not depend on the longer clips it is batched with."""
    from semgen_cli.models.compressor import Compressor, CompressorConfig
    from semgen_cli.models.dit import DiT
    from semgen_cli.models.presets import preset
    from semgen_cli.steps.train_semantic import SemanticStep, collate

    torch.manual_seed(0)
    step = SemanticStep(DiT(preset("tiny", in_channels=4, text_dim=6, patch=(1, 1, 1))), Compressor(CompressorConfig(in_dim=5, dim=4, hidden=8)), 0.0, 1.0)
    short = {"semantic": torch.randn(2, 2, 2, 5), "text": torch.randn(3, 6)}
    longer = {"semantic": torch.randn(4, 2, 2, 5), "text": torch.randn(3, 6)}
    g = lambda: torch.Generator().manual_seed(1)
    alone, _ = step(collate([short]), g())
    b = collate([short, longer])
    b["semantic"][0, 2:] = 1e3  # garbage in the padding
    v1, _ = step(collate([short, longer]), g())
    v2, _ = step(b, g())
    torch.testing.assert_close(v1, v2)


def test_train_semantic_refuses_a_baseline_latent_run(data, tmp_path):
    r = run_cli("train-latent", str(data), "--condition", "none", "--preset", "tiny", "--steps", "1", "--batch-size", "2", "--out", str(tmp_path / "ct"))
    assert r.returncode == 0
    r = run_cli("train-semantic", str(data), "--latent-run", str(tmp_path / "ct"), "--preset", "tiny", "--out", str(tmp_path / "s"))
    assert r.returncode == 2 and "--condition none" in r.stderr
    r = run_cli("train-semantic", str(data), "--latent-run", str(tmp_path / "nope"), "--preset", "tiny", "--out", str(tmp_path / "s"))
    assert r.returncode == 2 and "no such run folder" in r.stderr


@pytest.mark.slow  # end to end; fast tier: test_training samples every N steps through train()
def test_validation_samples_and_val_loss_leave_losses_alone(data, compressor, tmp_path):
    from semgen_cli.io.video import probe, read_metadata

    common = ["train-latent", str(data), "--compressor", str(compressor), "--preset", "tiny", "--batch-size", "2", "--steps", "2", "--seed", "1",
              "--val-clips", "1"]
    assert run_cli(*common, "--out", str(tmp_path / "plain")).returncode == 0
    r = run_cli(*common, "--sample-every", "1", "--sample-steps", "2", "--val-every", "1", "--out", str(tmp_path / "sampled"))
    assert r.returncode == 0, r.stderr
    held = json.loads((tmp_path / "sampled" / "config.json").read_text())["validation"]["clips"]
    assert len(held) == 1
    for step in (1, 2):
        mp4 = tmp_path / "sampled" / "samples" / f"step-{step:07d}" / (held[0].removesuffix(".mp4") + ".mp4")
        assert probe(mp4).frames == 29 and read_metadata(mp4)["settings"]["latent_steps"] == 2  # 8 latents → 29 frames
    rows = [json.loads(x) for x in (tmp_path / "sampled" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [1, 2] and [r["step"] for r in rows if "sample_seconds" in r] == [1, 2]
    trained = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert losses(tmp_path / "plain") == trained  # validation and sampling move no RNG and no weight


def test_config_file_gives_defaults_and_flags_win(data, compressor, tmp_path):
    cfg_file = tmp_path / "latent.json"
    cfg_file.write_text(json.dumps({"preset": "tiny", "steps": 3, "batch-size": 2, "seed": 4}))
    r = run_cli("train-latent", str(data), "--compressor", str(compressor), "--config", str(cfg_file), "--steps", "1", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["settings"]["preset"] == "tiny" and written["train"]["steps"] == 1 and written["train"]["seed"] == 4
    assert written["train"]["batch_size"] == 2


@pytest.mark.parametrize("content, message", [("{\"bogus\": 1}", "unknown option(s) bogus"), ("{not json", "not valid JSON"), ("[1]", "JSON object")])
def test_bad_config_file_is_one_line(data, tmp_path, content, message):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(content)
    r = run_cli("train-semantic", str(data), "--latent-run", str(tmp_path), "--config", str(cfg_file))
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("fit-compressor", str(data), "--config", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_train_semantic_windows_cut_longer_clips(data, latent, tmp_path):
    """--windows adds fixed windows of each length shorter than a clip, at half-window strides,
    the last flush with the clip's end; whole clips stay; bad values are one-line errors."""
    from semgen_cli.io.shards import Dataset
    from semgen_cli.steps.train_semantic import WholeClips

    ds = Dataset(data)
    n = int(ds.records[0]["semantic_tokens_t"])  # 4 s at 1.6 fps: 3 tokens
    clips = WholeClips(ds, None, (2, n, 99))
    per_clip = [it for it in clips.items if it[0] == 0]
    want_starts = sorted(set(range(0, n - 2 + 1, 1)) | {n - 2})
    assert per_clip == [(0, 0, n)] + [(0, s, 2) for s in want_starts]  # n and 99 are not shorter than the clip
    assert len(clips.lengths) == len(clips)
    whole = ds.load(0, ["semantic"])["semantic"].float()
    k = clips.items.index((0, want_starts[-1], 2))
    torch.testing.assert_close(clips[k]["semantic"], whole[want_starts[-1] : want_starts[-1] + 2])

    common = ["train-semantic", str(data), "--latent-run", str(latent), "--preset", "tiny", "--batch-size", "2", "--steps", "2"]
    r = run_cli(*common, "--windows", "2.5", "--out", str(tmp_path / "w"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "w" / "config.json").read_text())["settings"]["windows"] == [2.5]
    for bad in ("ten", "0"):
        r = run_cli(*common, "--windows", bad, "--out", str(tmp_path / "bad"))
        assert r.returncode == 2 and "--windows" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()


def test_train_latent_patch_init_resizes_a_coarser_run(data, compressor, latent, tmp_path):
    """--patch 1,1,1 --init RUN (patch 1,2,2): the blocks come from RUN, the patch embedding and
    head are RUN's resized (resize_patch); the run records its patch, and --resume keeps it."""
    from semgen_cli.models.dit import DiT, DiTConfig, resize_patch
    from semgen_cli.runs import CompressorRun, LatentRun, split_state
    from semgen_cli.training import load_checkpoint_weights

    comp_run = CompressorRun.from_dir(compressor, "--compressor")
    comp = comp_run.load()
    dit = DiT(DiTConfig.from_dict({**json.loads((latent / "config.json").read_text())["dit"], "patch": [1, 1, 1]}))
    LatentRun.from_dir(latent, "--init").init_weights(dit, comp_run.fingerprint, comp, "semantic")
    want = resize_patch(split_state(load_checkpoint_weights(latent, "ema"), "dit"), (1, 2, 2), (1, 1, 1))
    for k, v in dit.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)

    common = ["train-latent", str(data), "--compressor", str(compressor), "--preset", "tiny", "--batch-size", "2"]
    r = run_cli(*common, "--steps", "1", "--init", str(latent), "--patch", "1,1,1", "--out", str(tmp_path / "p1"))
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "p1" / "config.json").read_text())
    assert cfg["dit"]["patch"] == [1, 1, 1] and cfg["settings"]["patch"] == [1, 1, 1]
    r = run_cli(*common, "--steps", "2", "--patch", "1,1,1", "--init", str(latent), "--out", str(tmp_path / "p1"), "--resume")
    assert r.returncode == 0, r.stderr
    r = run_cli(*common, "--steps", "3", "--out", str(tmp_path / "p1"), "--resume")  # without --patch: another DiT
    assert r.returncode == 2 and "different dit" in r.stderr


@pytest.mark.parametrize("patch, message", [("1,2", "three positive integers"), ("a,b,c", "three positive integers"),
                                            ("1,0,1", "three positive integers"), ("1,4,4", "does not divide")])
def test_train_latent_patch_errors(data, compressor, latent, tmp_path, patch, message):
    r = run_cli("train-latent", str(data), "--compressor", str(compressor), "--preset", "tiny", "--batch-size", "2",
                "--steps", "1", "--init", str(latent), "--patch", patch, "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_train_semantic_accepts_a_latent_run_on_another_vae(data, latent, tmp_path):
    """Stage 2 reads text and semantic features only: a --latent-run whose data came from another
    VAE (a stage 1 fine-tuned on a new VAE's latents) is accepted; another text encoder is not."""
    import shutil

    def latent_with(role: str, fingerprint: str) -> Path:
        run = tmp_path / f"lat-{role}"
        shutil.copytree(latent, run)
        cfg = json.loads((run / "config.json").read_text())
        cfg["data"]["components"][role]["fingerprint"] = fingerprint
        (run / "config.json").write_text(json.dumps(cfg))
        return run

    common = ["train-semantic", str(data), "--preset", "tiny", "--batch-size", "2", "--steps", "1"]
    r = run_cli(*common, "--latent-run", str(latent_with("vae", "wan:000000000000")), "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    r = run_cli(*common, "--latent-run", str(latent_with("text", "minilm:000000000000")), "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "text encoder" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "b" / "checkpoints").exists()

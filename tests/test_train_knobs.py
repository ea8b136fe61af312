"""Recipes and knobs: --config in JSON/YAML/TOML, --dry-run, --ema-start, precision auto,
--attention-backend, --compile (regional), train-semantic --gradient-checkpointing, --async-save."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_inproc, tiny_data
from semgen_cli.errors import ConfigError
from semgen_cli.models import DiT, preset
from semgen_cli.models.acceleration import attention_backend, check_attention_backend, compile_blocks
from semgen_cli.training import TrainConfig, load_checkpoint_weights, train

sys.path.insert(0, str(Path(__file__).parent))
from test_training import NoisyPoints, cfg, collate, loss_fn, make_net  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("knobs")
    return tiny_data(root, count=3, compressor_steps=3, batch=2)


def _one_line_exit_2(r, *fragments: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


# ----------------------------------------------------------------------------- --config, --dry-run

RECIPES = {
    "r.yaml": "preset: tiny\nbatch-size: 2\nsteps: 7\nema_start: 3\nlr: 2e-4\n",
    "r.yml": "preset: tiny\nbatch_size: 2\nsteps: 7\nema-start: 3\n",
    "r.toml": 'preset = "tiny"\nbatch-size = 2\nsteps = 7\nema_start = 3\n',
    "r.json": '{"preset": "tiny", "batch-size": 2, "steps": 7, "ema-start": 3}',
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_config_formats_and_dry_run_write_nothing(data, tmp_path, name):
    recipe = tmp_path / name
    recipe.write_text(RECIPES[name])
    out = tmp_path / "run"
    r = run_inproc("train-latent", data, "--compressor", data.parent / "comp", "--config", recipe, "--dry-run", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "dry run: nothing was written" in r.stdout
    rows = {line.split()[0] + " " + line.split()[1]: line.split()[-1] for line in r.stdout.splitlines() if len(line.split()) >= 3}
    assert rows["ema start"] == "3" and rows["batch size"] == "2"
    if name == "r.yaml":  # 2e-4 is a number in YAML recipes too (PyYAML alone reads it as a string)
        assert any(ln.split() == ["lr", "0.0002"] for ln in r.stdout.splitlines()), r.stdout
    assert "  steps           7" in r.stdout or any(ln.split()[:2] == ["steps", "7"] for ln in r.stdout.splitlines())
    assert not out.exists() and not (tmp_path / "run.lock").exists()


@pytest.mark.parametrize("cmd", ["fit-compressor", "train-semantic"])
def test_dry_run_on_every_trainer(runs, tmp_path, cmd):
    extra = ("--latent-run", str(runs / "lat"), "--preset", "tiny") if cmd == "train-semantic" else ()
    r = run_inproc(cmd, runs / "data", *extra, "--steps", "3", "--dry-run", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert "dry run: nothing was written" in r.stdout and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, text, fragment", [
    ("bad.yaml", "steps: [1, 2\n", "not valid YAML"),
    ("bad.toml", "steps = \n", "not valid TOML"),
    ("list.yaml", "- steps\n- 2\n", "expected a YAML mapping"),
    ("unknown.toml", "learning_rate = 0.1\n", "unknown option(s) learning_rate"),
    ("type.yaml", "batch-size: two\n", "batch_size must be a whole number"),
    ("recipe.ini", "steps=2\n", "unknown extension"),
])
def test_bad_config_is_one_line_and_writes_nothing(data, tmp_path, name, text, fragment):
    recipe = tmp_path / name
    recipe.write_text(text)
    r = run_inproc("train-latent", data, "--compressor", data.parent / "comp", "--config", recipe, "--out", tmp_path / "run")
    _one_line_exit_2(r, fragment, str(recipe))
    assert not (tmp_path / "run").exists()


def test_async_save_without_fsdp_is_refused_before_anything_is_written(data, tmp_path):
    r = run_inproc("train-latent", data, "--compressor", data.parent / "comp", "--preset", "tiny", "--async-save",
                   "--out", tmp_path / "run")
    _one_line_exit_2(r, "--async-save needs --fsdp")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- attention backend, compile


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal off CUDA")
@pytest.mark.parametrize("backend", ["flash", "cudnn", "efficient"])
def test_cuda_kernels_are_refused_on_cpu(data, tmp_path, backend):
    r = run_inproc("train-latent", data, "--compressor", data.parent / "comp", "--preset", "tiny",
                   "--attention-backend", backend, "--out", tmp_path / "run")
    _one_line_exit_2(r, f"--attention-backend {backend}: needs CUDA")
    assert not (tmp_path / "run").exists()
    r = run_inproc("generate", "a red circle", "--attention-backend", backend, "--out", tmp_path / "g.mp4")
    _one_line_exit_2(r, f"--attention-backend {backend}: needs CUDA")
    assert not (tmp_path / "g.mp4").exists()


def test_unknown_attention_backend():
    with pytest.raises(ConfigError, match="must be one of auto, flash, cudnn, efficient, math"):
        check_attention_backend("xformers")


def _tiny_dit_inputs():
    torch.manual_seed(0)
    dit = DiT(preset("tiny", in_channels=4, out_channels=4, text_dim=16)).eval()
    g = torch.Generator().manual_seed(1)
    x, t, text = torch.randn(1, 4, 3, 8, 8, generator=g), torch.rand(1, generator=g), torch.randn(1, 5, 16, generator=g)
    return dit, (x, t, text)


def test_math_backend_computes_the_same_attention():
    dit, args = _tiny_dit_inputs()
    with torch.no_grad():
        auto = dit(*args)
        with attention_backend("math"):
            math_ = dit(*args)
    assert torch.allclose(auto, math_, atol=1e-5)


@pytest.mark.slow  # inductor compiles a C++ kernel per block shape: about 2 minutes on 2 busy CPU cores
def test_compile_is_regional_and_keeps_outputs_and_keys():
    dit, args = _tiny_dit_inputs()
    keys = list(dit.state_dict())
    with torch.no_grad():
        eager = dit(*args)
    assert compile_blocks(dit) == len(dit.blocks)
    assert list(dit.state_dict()) == keys  # in place: checkpoints and EMA keys unchanged
    assert all(b._compiled_call_impl is not None for b in dit.blocks) and getattr(dit, "_compiled_call_impl", None) is None
    with torch.no_grad():
        compiled = dit(*args)
    assert torch.allclose(eager, compiled, atol=1e-4)


# ----------------------------------------------------------------------------- EMA start, precision


def test_ema_copies_the_weights_before_ema_start(tmp_path):
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=4, ema_start=3), tmp_path / "run")
    for step, same in ((2, True), (4, False)):
        ema = load_checkpoint_weights(tmp_path / "run", "ema", step=step)
        model = load_checkpoint_weights(tmp_path / "run", "model", step=step)
        assert all(torch.equal(ema[k], model[k].float()) for k in model) is same, step
    # the default (0) averages from the first step, as before
    train(make_net(), NoisyPoints(), collate, loss_fn, cfg(steps=2), tmp_path / "plain")
    ema, model = (load_checkpoint_weights(tmp_path / "plain", w, step=2) for w in ("ema", "model"))
    assert not torch.equal(ema["mlp.0.weight"], model["mlp.0.weight"])


def test_ema_start_must_be_a_whole_number():
    with pytest.raises(ConfigError, match="--ema-start -1"):
        TrainConfig(ema_start=-1)


def test_precision_auto_resolves_and_is_recorded(monkeypatch, tmp_path):
    assert TrainConfig().precision == ("bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    c = TrainConfig(precision="auto")
    assert c.precision == "bf16" and c.to_dict()["precision"] == "bf16"
    assert TrainConfig(precision="fp32").precision == "fp32"  # an explicit choice stays
    with pytest.raises(ConfigError, match='--precision .fp16.: must be "auto", "fp32" or "bf16"'):
        TrainConfig(precision="fp16")


def test_ema_start_at_default_keeps_older_fingerprints():
    recorded = TrainConfig(precision="fp32").to_dict()
    recorded.pop("ema_start")
    recorded.pop("async_save")
    assert TrainConfig.from_dict(recorded).fingerprint() == TrainConfig(precision="fp32").fingerprint()
    assert TrainConfig(precision="fp32", ema_start=5).fingerprint() != TrainConfig(precision="fp32").fingerprint()


# ----------------------------------------------------------------------------- train-semantic knobs


@pytest.mark.slow
def test_train_semantic_gradient_checkpointing_and_math_kernel_train_the_same(runs, tmp_path):
    from semgen_cli.steps.train_semantic import TrainSemanticConfig, train_semantic

    losses = {}
    for name, kw in (("plain", {}), ("knobs", {"gradient_checkpointing": True, "attention_backend": "math"})):
        cfg_ = TrainSemanticConfig(str(runs / "data"), latent_run=str(runs / "lat"), out=str(tmp_path / name), preset="tiny", **kw)
        train_semantic(cfg_, TrainConfig(steps=2, batch_size=2))
        losses[name] = [json.loads(ln)["loss"] for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        settings = json.loads((tmp_path / name / "config.json").read_text())["settings"]
        assert settings["gradient_checkpointing"] is bool(kw)
    assert losses["plain"] == pytest.approx(losses["knobs"], rel=1e-5)

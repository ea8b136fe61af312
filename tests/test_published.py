"""The published component configs (semgen_cli.components.published) that examples/real_size.sh
builds, and benchmarks/gpu.py at its CPU size. Models are built on the meta device: no weights."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from semgen_cli.components import published
from semgen_cli.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", published.COMPONENTS)
def test_published_parameter_counts(name):
    module = published.build(name, "meta")
    assert all(p.device.type == "meta" for p in module.parameters())
    assert published.parameter_count(module) == published.PARAMETER_COUNTS[name]


def test_published_sizes_are_the_named_ones():
    n = published.PARAMETER_COUNTS
    assert 1.3e9 < n["wan-1.3b-transformer"] < 1.5e9  # "1.3B"
    assert 1.2e8 < n["wan-vae"] < 1.3e8  # Wan2.1 VAE, 127 M
    assert 6.6e8 < n["qwen2.5-vl-3b-vision"] < 6.8e8  # the 3B's vision tower
    assert 5.6e9 < n["umt5-xxl-encoder"] < 5.8e9  # UMT5-XXL encoder


def test_wan_transformer_config_matches_the_wan_preset_and_loads_into_semgen():
    """semgen's DiT of the published config holds exactly the Wan weights plus its semantic layers."""
    from semgen_cli.models.dit import DiT, DiTConfig
    from semgen_cli.models.presets import preset
    from semgen_cli.models.wan import wan_key

    cfg = DiTConfig.from_wan_config(dict(published.WAN_T2V_1_3B_TRANSFORMER), semantic_dim=8)
    assert cfg == preset("wan-1.3b", semantic_dim=8)
    with torch.device("meta"):
        dit = DiT(cfg)
    wan = published.build("wan-1.3b-transformer", "meta")
    mapped = {wan_key(k): v.shape for k, v in dit.state_dict().items() if wan_key(k) is not None}
    assert mapped == {k: v.shape for k, v in wan.state_dict().items()}


def test_published_depth_override_keeps_the_width():
    wan = published.build("wan-1.3b-transformer", "meta", layers=2)
    assert wan.config.num_layers == 2 and wan.config.ffn_dim == 8960
    qwen = published.build("qwen2.5-vl-3b-vision", "meta", layers=4)
    assert qwen.config.depth == 4 and qwen.config.fullatt_block_indexes == [3]
    umt5 = published.build("umt5-xxl-encoder", "meta", layers=2, vocab_size=1000)
    assert umt5.config.d_model == 4096 and umt5.shared.num_embeddings == 1000


def test_published_unknown_name_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown published component 'wan-14b'"):
        published.build("wan-14b")
    with pytest.raises(ConfigError, match="layers must be >= 1"):
        published.build("wan-vae", layers=0)


def _gpu_benchmark():
    spec = importlib.util.spec_from_file_location("semgen_gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclass needs its module registered
    spec.loader.exec_module(bench)
    return bench


def test_gpu_benchmark_small_runs_on_cpu(tmp_path):
    bench = _gpu_benchmark()
    out = tmp_path / "gpu.json"
    rows = bench.main(["--small", "--seconds", "1", "2", "--backends", "math", "--lora-rank", "2", "--out", str(out)])
    denoise = [r for r in rows if r["kind"] == "denoise"]
    assert {(r["attention"], r["seconds"]) for r in denoise} == {(a, s) for a in ("full", "swin") for s in (1.0, 2.0)}
    assert all("error" not in r and r["step_s"] > 0 for r in rows)
    train = [r for r in rows if r["kind"] == "train"]
    assert [(r["weights"], r["gradient_checkpointing"]) for r in train] == [
        ("full", False), ("full", True), ("lora r2", False), ("lora r2", True)]
    assert train[2]["trainable"] < train[0]["trainable"]
    assert out.is_file()


def test_gpu_benchmark_flop_model_swin_is_linear_full_quadratic():
    bench = _gpu_benchmark()
    from semgen_cli.models.dit import DiT
    from semgen_cli.models.presets import preset

    with torch.device("meta"):
        dit = DiT(preset("wan-1.3b", semantic_dim=8))
    geo = bench.Geometry()
    full = [bench.forward_flops(dit, geo, s, None) for s in (10, 60)]
    swin = [bench.forward_flops(dit, geo, s, 8) for s in (10, 60)]
    assert 5 < swin[1] / swin[0] < 7  # linear in length
    assert full[1] / full[0] > 15  # the attention term grows quadratically
    # 10 s at 480x832: 41 latent frames of 30x52 tokens + 8 semantic frames of 17x30, 512 text tokens
    L, D = 41 * 30 * 52 + 8 * 17 * 30, 1536
    by_hand = 2 * 1.42e9 * L + 30 * (4 * L * L * D + 4 * L * 512 * D)
    assert abs(full[0] - by_hand) / by_hand < 0.02

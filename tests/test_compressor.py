"""The semantic compressor (paper §3.2): shapes, KL, autoencoding, stats, the "none" ablation."""

from __future__ import annotations

import pytest
import torch

from semgen_cli.errors import ConfigError
from semgen_cli.models import Compressor, CompressorConfig


def test_shapes_and_reparameterisation():
    torch.manual_seed(0)
    comp = Compressor(CompressorConfig(in_dim=32, dim=8, hidden=16))
    feats = torch.randn(2, 3, 4, 5, 32)  # (B, Ts, hs, ws, d)
    z, mean, logvar = comp(feats)
    assert z.shape == mean.shape == logvar.shape == (2, 3, 4, 5, 8)
    assert not torch.equal(z, mean)  # sampled in training mode
    comp.eval()
    z, mean, _ = comp(feats)
    assert torch.equal(z, mean)  # the mean in eval mode
    assert comp.reconstruct(z).shape == feats.shape


def test_kl_is_zero_for_standard_normal_and_positive_otherwise():
    zero = torch.zeros(4, 8)
    assert Compressor.kl(zero, zero).item() == 0.0
    kl = Compressor.kl(torch.ones(4, 8), torch.zeros(4, 8))
    torch.testing.assert_close(kl, torch.tensor(4.0))  # 0.5 * 1 * 8 channels, averaged over tokens
    assert Compressor.kl(zero, torch.full((4, 8), -2.0)).item() > 0


def test_autoencoder_fits_and_gradients_flow():
    torch.manual_seed(0)
    comp = Compressor(CompressorConfig(in_dim=16, dim=4, hidden=32, kl_weight=1e-4))
    basis = torch.randn(4, 16)
    feats = torch.randn(256, 4) @ basis  # features on a 4-dim subspace
    opt = torch.optim.Adam(comp.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss, parts = comp.autoencoder_loss(feats)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first or parts["reconstruction"]
    assert parts["reconstruction"] < 0.3 * first
    assert set(parts) == {"reconstruction", "kl"}


def test_stats_normalize_roundtrip_and_are_saved():
    comp = Compressor(CompressorConfig(in_dim=16, dim=4, hidden=8))
    z = torch.randn(100, 4) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + 5.0
    comp.set_stats(*Compressor.stats_of(z))
    n = comp.normalize(z)
    torch.testing.assert_close(n.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(n.std(0, unbiased=False), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(comp.denormalize(n), z)
    assert {"stats_mean", "stats_std"} <= set(comp.state_dict())
    with pytest.raises(ValueError, match="shape"):
        comp.set_stats(torch.zeros(3), torch.ones(3))


@pytest.mark.parametrize("dim", [None, "none"])
def test_dim_none_is_identity(dim):
    comp = Compressor(CompressorConfig(in_dim=12, dim=dim))
    feats = torch.randn(2, 3, 12)
    z, mean, logvar = comp(feats)
    assert torch.equal(z, feats) and torch.equal(mean, feats)
    assert Compressor.kl(mean, logvar).item() == pytest.approx(0.5 * (feats**2).sum(-1).mean().item())
    assert torch.equal(comp.reconstruct(z), feats)
    assert comp.config.out_dim == 12 and comp.stats_mean.shape == (12,)
    assert len(list(comp.parameters())) == 0


@pytest.mark.parametrize("bad", [dict(dim=0), dict(in_dim=0), dict(hidden=0), dict(kl_weight=-1.0)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        CompressorConfig(**bad)


def test_config_dict_roundtrip():
    cfg = CompressorConfig(in_dim=64, dim=8, hidden=32, kl_weight=0.01)
    assert CompressorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        CompressorConfig.from_dict({"in_dim": 4, "width": 2})

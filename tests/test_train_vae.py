"""examples/toy/train_vae.py's chunked encode/decode (the --warmup-latents path) must match
diffusers' own `AutoencoderKLWan.encode`/`decode` exactly, so a diffusers change to the causal
cache protocol shows up here and not as a silently worse toy VAE."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

TOY = Path(__file__).resolve().parents[1] / "examples" / "toy"


def _train_vae():
    sys.path.insert(0, str(TOY))
    try:
        spec = importlib.util.spec_from_file_location("train_vae", TOY / "train_vae.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(TOY))


def test_chunked_encode_decode_matches_diffusers():
    import diffusers

    T = _train_vae()
    torch.manual_seed(0)
    model = diffusers.AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                                       temperal_downsample=[False, True, True], is_residual=True).eval()
    x, y, m = T.batch(np.random.default_rng(0), 1, 9, 32, extra=8)  # 17 frames: 5 latent frames
    assert x.shape == (1, 3, 17, 32, 32) and m.shape == (1, 1, 17, 32, 32)
    with torch.no_grad():
        ref_mu = model.encode(x).latent_dist.mean
        ref = model.decode(ref_mu).sample
        for lead in (0, 2):
            mu = T.encode_chunks(model, x, lead)
            torch.testing.assert_close(mu, ref_mu, rtol=0, atol=0)
            rec = T.decode_tail(model, mu, lead)
            assert rec.shape[2] == 17 - T.tail_frames(lead)
            torch.testing.assert_close(rec, ref[:, :, T.tail_frames(lead):], rtol=0, atol=0)
    assert [T.tail_frames(k) for k in (0, 1, 2, 3)] == [0, 1, 5, 9]


def test_warmup_frames_carry_no_gradient():
    """Gradients reach the encoder only through the latent frames after the warm-up."""
    import diffusers

    T = _train_vae()
    torch.manual_seed(0)
    model = diffusers.AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                                       temperal_downsample=[False, True, True])
    x, _, _ = T.batch(np.random.default_rng(1), 1, 5, 16, extra=8)  # 13 frames: 4 latent frames
    x.requires_grad_(True)
    mu = T.encode_chunks(model, x, 2)
    mu[:, :, 2:].sum().backward()
    g = x.grad.abs().sum(dim=(0, 1, 3, 4))  # per frame
    assert float(g[: T.tail_frames(2)].sum()) == 0.0 and float(g[T.tail_frames(2):].sum()) > 0

"""VAE specs: tiny models of the real diffusers classes saved with save_pretrained and loaded
through `load_vae`, exactly the path users take with real checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semgen_cli.components import load_vae
from semgen_cli.components.vae import TINY_WAN_CONFIG, _to_uint8
from semgen_cli.errors import ConfigError, InputError


def _video(f, h, w, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (f, h, w, 3), dtype=np.uint8)


def _save_wan(folder, seed, stats=True):
    import diffusers

    cfg = dict(TINY_WAN_CONFIG)
    if stats:  # non-trivial normalisation so the test sees it applied
        cfg.update(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 0.5, 1.5, 1.0])
    torch.manual_seed(seed)
    diffusers.AutoencoderKLWan(**cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return _save_wan(tmp_path_factory.mktemp("wan") / "vae", seed=1)


@pytest.fixture(scope="module")
def wan(wan_dir):
    return load_vae(f"wan:{wan_dir}")


def test_tiny_vae_is_seeded_frozen_and_says_tiny():
    a, b = load_vae("tiny"), load_vae("tiny")
    assert a.fingerprint.startswith("tiny-wan-vae:seed0:")
    assert a.fingerprint == b.fingerprint
    assert not a.module.training
    assert not any(p.requires_grad for p in a.module.parameters())
    assert (a.latent_channels, a.temporal_stride, a.spatial_stride) == (4, 4, 8)
    assert a.scaling["mean"] == [0.0] * 4 and a.scaling["std"] == [1.0] * 4
    desc = a.describe()
    json.dumps(desc)
    assert desc["class"] == "AutoencoderKLWan" and desc["spec"] == "tiny"


def test_wan_spec_loads_saved_model(wan, wan_dir, tmp_path):
    assert wan.fingerprint.startswith("wan:")
    assert wan.fingerprint == load_vae(f"wan:{wan_dir}").fingerprint
    other = _save_wan(tmp_path / "other", seed=2)
    assert load_vae(f"wan:{other}").fingerprint != wan.fingerprint
    assert not any(p.requires_grad for p in wan.module.parameters())
    # A diffusers pipeline root with the VAE in vae/ works too.
    assert load_vae(f"wan:{wan_dir.parent}").fingerprint == wan.fingerprint


def test_frame_counts(wan):
    assert [wan.valid_frames(n) for n in (0, 1, 4, 5, 8, 9, 100)] == [0, 1, 1, 5, 5, 9, 97]
    assert wan.frames_for_latents(1) == 1 and wan.frames_for_latents(4) == 13
    assert wan.latents_for_frames(13) == 4


def test_chunked_encode_equals_whole_video_encode(wan):
    frames = _video(13, 16, 24)
    z = wan.encode(frames)
    assert z.shape == (4, 4, 2, 3) and z.dtype == torch.float32
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        mu = wan.module.encode(x).latent_dist.mean[0]  # diffusers' own whole-video loop
    mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(4, 1, 1, 1)
    std = torch.tensor([2.0, 0.5, 1.5, 1.0]).view(4, 1, 1, 1)
    torch.testing.assert_close(z, (mu - mean) / std, rtol=1e-5, atol=1e-5)


def test_encode_is_causal_prefix_stable(wan):
    # The causal cache means the first latents of a longer clip equal those of its prefix.
    frames = _video(9, 16, 16, seed=3)
    torch.testing.assert_close(wan.encode(frames)[:, :2], wan.encode(frames[:5]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_iter_decode_concatenates_to_whole_decode(wan, chunk):
    z = torch.randn(4, 4, 2, 3, generator=torch.Generator().manual_seed(0))
    whole = wan.decode(z)
    assert whole.shape == (13, 16, 24, 3) and whole.dtype == np.uint8
    parts = list(wan.iter_decode(z, chunk_latent_frames=chunk))
    assert parts[0].shape[0] == wan.frames_for_latents(min(chunk, 4))
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    with torch.no_grad():  # and both equal diffusers' own decode of the de-normalised latents
        ref = wan.module.decode(wan.denormalize(z)[None]).sample[0]
    assert np.abs(_to_uint8(ref).astype(int) - whole.astype(int)).max() <= 1


def test_bad_frames_are_input_errors(wan):
    with pytest.raises(InputError, match="4k\\+1"):
        wan.encode(_video(6, 16, 16))
    with pytest.raises(InputError, match="multiple of 8"):
        wan.encode(_video(5, 12, 16))
    with pytest.raises(InputError, match="uint8"):
        wan.encode(_video(5, 16, 16).astype(np.float32))
    with pytest.raises(InputError, match="latents"):
        wan.decode(torch.zeros(3, 2, 2, 2))
    with pytest.raises(ConfigError):
        next(wan.iter_decode(torch.zeros(4, 2, 2, 2), chunk_latent_frames=0))


def test_ltx_spec(tmp_path):
    import diffusers

    torch.manual_seed(0)
    diffusers.AutoencoderKLLTXVideo(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 5, decoder_inject_noise=(False,) * 5,
    ).save_pretrained(tmp_path / "ltx")
    vae = load_vae(f"ltx:{tmp_path / 'ltx'}")
    assert vae.fingerprint.startswith("ltx:")
    assert (vae.temporal_stride, vae.spatial_stride, vae.valid_frames(12)) == (8, 32, 9)
    z = vae.encode(_video(9, 64, 32))
    assert z.shape == (4, 2, 2, 1)
    assert vae.decode(z).shape == (9, 64, 32, 3)
    np.testing.assert_array_equal(np.concatenate(list(vae.iter_decode(z, 1))), vae.decode(z))


def test_cogvideox_spec(tmp_path):
    import diffusers

    torch.manual_seed(0)
    diffusers.AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4,
    ).save_pretrained(tmp_path / "cog")
    vae = load_vae(f"cogvideox:{tmp_path / 'cog'}")
    assert vae.fingerprint.startswith("cogvideox:")
    assert (vae.temporal_stride, vae.spatial_stride) == (4, 4)
    z = vae.encode(_video(9, 16, 16))
    assert z.shape == (4, 3, 4, 4)
    assert vae.decode(z).shape == (9, 16, 16, 3)


def test_vae_spec_errors(tmp_path, wan_dir):
    with pytest.raises(ConfigError, match="unknown VAE spec"):
        load_vae("sdxl:/x")
    with pytest.raises(ConfigError, match="names no folder"):
        load_vae("wan:")
    with pytest.raises(InputError, match="does not exist"):
        load_vae(f"wan:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        load_vae(f"wan:{tmp_path / 'empty'}")
    with pytest.raises(InputError, match="holds a AutoencoderKLWan"):
        load_vae(f"ltx:{wan_dir}")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((wan_dir / "config.json").read_text())
    with pytest.raises(InputError, match="could not load VAE"):
        load_vae(f"wan:{broken}")

"""The DiT: Wan2.1 weight equivalence, config validation, presets, in-context semantic tokens."""

from __future__ import annotations


import pytest
import torch

from semgen_cli.errors import ConfigError, InputError, MismatchError
from semgen_cli.models import PRESETS, DiT, DiTConfig, preset
from semgen_cli.models.dit import semantic_latent_times, semantic_positions, semantic_times_from_fps, video_positions
from semgen_cli.models.wan import to_wan_state_dict, wan_key

WAN_INIT = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=32,
)


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    wan = diffusers.WanTransformer3DModel(**WAN_INIT).eval()
    with torch.no_grad():  # move every weight off its default init so the mapping is really tested
        for p in wan.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("wan") / "transformer"
    wan.save_pretrained(folder)
    return wan, folder


def _inputs(seed=0, B=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, 2, 16, 16, generator=g)  # a 1x4x2x16x16 video latent, as diffusers' tests
    t = torch.rand(B, generator=g)
    text = torch.randn(B, 5, 16, generator=g)
    return x, t, text


def test_wan_weights_give_wan_outputs(wan_folder):
    wan, folder = wan_folder
    model = DiT.from_wan(folder).eval()
    x, t, text = _inputs()
    with torch.no_grad():
        # diffusers' Wan pipeline feeds timestep = 1000 * t; semgen takes t in [0, 1]
        ref = wan(x, t * 1000, text, return_dict=False)[0]
        out = model(x, t, text)
    assert out.shape == ref.shape == x.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_wan_loading_from_module_and_pipeline_folder(wan_folder):
    wan, folder = wan_folder
    x, t, text = _inputs(1)
    a = DiT.from_wan(wan).eval()
    b = DiT.from_wan(folder.parent).eval()  # pipeline folder holding transformer/
    with torch.no_grad():
        torch.testing.assert_close(a(x, t, text), b(x, t, text))


def test_wan_weights_with_semantic_tokens_keep_video_path(wan_folder):
    """Semantic layers are fresh; with semantic_dim set but no semantic tokens, outputs equal Wan's."""
    wan, folder = wan_folder
    model = DiT.from_wan(folder, semantic_dim=3).eval()
    fresh = model.load_wan_state_dict(wan.state_dict())
    assert fresh and all(n.startswith(("semantic_embed.", "sigma_embed.")) for n in fresh)
    x, t, text = _inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, text), wan(x, t * 1000, text, return_dict=False)[0], atol=1e-5, rtol=1e-5)


def test_wan_key_roundtrip(wan_folder):
    wan, _ = wan_folder
    model = DiT.from_wan(wan)
    assert set(to_wan_state_dict(model)) == set(wan.state_dict())
    assert wan_key("blocks.1.self_attn.o.weight") == "blocks.1.attn1.to_out.0.weight"
    assert wan_key("semantic_embed.weight") is None


def test_wan_config_mapping():
    cfg = DiTConfig.from_wan_config({**WAN_INIT, "patch_size": [1, 2, 2]}, attention="swin", window=4)
    assert (cfg.dim, cfg.heads, cfg.layers, cfg.ffn_dim, cfg.text_dim, cfg.patch) == (24, 2, 2, 32, 16, (1, 2, 2))
    assert cfg.attention == "swin" and cfg.window == 4
    with pytest.raises(ConfigError, match="image-to-video"):
        DiTConfig.from_wan_config({**WAN_INIT, "image_dim": 1280})


def test_wan_bad_inputs(tmp_path, wan_folder):
    wan, folder = wan_folder
    with pytest.raises(InputError, match="config.json"):
        DiT.from_wan(tmp_path)
    wrong = DiT(DiTConfig.from_wan_config(WAN_INIT, ffn_dim=48))
    with pytest.raises(MismatchError, match="shape"):
        wrong.load_wan_state_dict(wan.state_dict())
    with pytest.raises(MismatchError, match="cannot place"):
        DiT(DiTConfig.from_wan_config(WAN_INIT)).load_wan_state_dict({**wan.state_dict(), "extra.weight": torch.zeros(1)})


@pytest.mark.parametrize(
    "bad",
    [
        dict(dim=30, heads=4),  # not divisible
        dict(dim=20, heads=4),  # head dim 5: odd, no 3D RoPE split
        dict(dim=8, heads=2),  # head dim 4 < 6
        dict(attention="local"),
        dict(attention="swin", window=1),
        dict(patch=(1, 2)),
        dict(qk_norm="layer_norm"),
        dict(semantic_dim=-1),
        dict(layers=0),
        dict(freq_dim=7),
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        DiTConfig(**bad)


def test_config_dict_roundtrip_and_unknown_keys():
    cfg = preset("tiny", in_channels=4, text_dim=16, semantic_dim=8, attention="swin", window=2)
    assert DiTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown DiT config key"):
        DiTConfig.from_dict({**cfg.to_dict(), "depth": 3})


def test_presets():
    assert set(PRESETS) >= {"tiny", "toy", "wan-1.3b", "wan-14b"}
    w = preset("wan-1.3b", in_channels=16, text_dim=4096)
    assert (w.dim, w.layers, w.heads, w.ffn_dim, w.text_dim, w.freq_dim, w.head_dim) == (1536, 30, 12, 8960, 4096, 256, 128)
    w = preset("wan-14b")
    assert (w.dim, w.layers, w.heads, w.ffn_dim, w.head_dim) == (5120, 40, 40, 13824, 128)
    assert preset("toy", patch=(1, 1, 1), in_channels=8).patch == (1, 1, 1)
    with pytest.raises(ConfigError, match="unknown DiT preset"):
        preset("huge")


def test_tiny_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    model = DiT(preset("tiny", in_channels=4, text_dim=16, semantic_dim=8, attention="swin", window=2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, t, text = torch.randn(2, 4, 4, 8, 8), torch.rand(2), torch.randn(2, 6, 16)
    sem = torch.randn(2, 2, 2, 2, 8)
    loss = (model(x, t, text, semantic=sem, semantic_sigma=torch.rand(2)) - x).pow(2).mean()
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in model.parameters())


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = DiT(preset("tiny", in_channels=4, text_dim=16, semantic_dim=8, attention="swin", window=2))
    torch.nn.init.normal_(model.head.weight)
    x, t, text, sem = torch.randn(1, 4, 4, 4, 4), torch.rand(1), torch.randn(1, 3, 16), torch.randn(1, 2, 1, 1, 8)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = ckpt
        model(x, t, text, semantic=sem).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_bf16_weights_run():
    model = DiT(preset("tiny", in_channels=4, text_dim=16, semantic_dim=8)).to(torch.bfloat16)
    out = model(torch.randn(1, 4, 2, 4, 4), torch.rand(1), torch.randn(1, 3, 16), semantic=torch.randn(1, 1, 2, 2, 8))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_stage2_patchless_shapes():
    model = DiT(preset("tiny", in_channels=8, text_dim=16, patch=(1, 1, 1)))
    z = torch.randn(2, 8, 3, 2, 3)  # (B, C=8, Ts, hs, ws) compressed semantic tokens
    assert model(z, torch.rand(2), torch.randn(2, 4, 16)).shape == z.shape


def test_output_shape_same_with_and_without_semantic_tokens():
    torch.manual_seed(0)
    model = DiT(preset("tiny", in_channels=4, text_dim=16, semantic_dim=8)).eval()
    torch.nn.init.normal_(model.head.weight)  # zero at init
    x, t, text = torch.randn(2, 4, 5, 8, 8), torch.rand(2), torch.randn(2, 6, 16)
    plain = model(x, t, text)
    with_sem = model(x, t, text, semantic=torch.randn(2, 2, 3, 3, 8), semantic_sigma=torch.tensor([0.0, 0.3]))
    assert plain.shape == with_sem.shape == x.shape
    assert not torch.allclose(plain, with_sem)


def test_semantic_noise_level_conditions_output():
    torch.manual_seed(0)
    model = DiT(preset("tiny", in_channels=4, text_dim=16, semantic_dim=8)).eval()
    torch.nn.init.normal_(model.sigma_embed.fc2.weight)  # zero at init; give it weights
    torch.nn.init.normal_(model.head.weight)
    x, t, text, sem = torch.randn(1, 4, 2, 4, 4), torch.rand(1), torch.randn(1, 3, 16), torch.randn(1, 1, 2, 2, 8)
    a = model(x, t, text, semantic=sem, semantic_sigma=torch.tensor([0.0]))
    b = model(x, t, text, semantic=sem, semantic_sigma=torch.tensor([0.5]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, model(x, t, text, semantic=sem))  # None means sigma = 0


def test_semantic_rope_time_alignment():
    """A semantic frame at latent time tau sits at tau on RoPE's time axis, and its grid cells map
    onto the latent patch grid: with a same-size grid its positions equal the video tokens'."""
    vid = video_positions(4, 6, 8).view(4, 6, 8, 3)
    times = torch.tensor([[0.0, 2.0, 3.0]])
    sem = semantic_positions(times, 6, 8, 6, 8).view(3, 6, 8, 3)
    for k, tau in enumerate([0, 2, 3]):
        torch.testing.assert_close(sem[k], vid[tau])
    # a coarser 3x4 grid: cell centres on the 6x8 patch grid, same time
    coarse = semantic_positions(torch.tensor([[1.5]]), 3, 4, 6, 8).view(3, 4, 3)
    assert torch.all(coarse[..., 0] == 1.5)
    torch.testing.assert_close(coarse[:, 0, 1], torch.tensor([0.5, 2.5, 4.5]))
    torch.testing.assert_close(coarse[0, :, 2], torch.tensor([0.5, 2.5, 4.5, 6.5]))


def test_semantic_rope_alignment_in_the_model():
    """Attention scores between a video token and a semantic token at the same position are those
    of two video tokens at that position: RoPE of the semantic tokens is the video tokens'."""
    model = DiT(preset("tiny", in_channels=4, text_dim=16, semantic_dim=8))
    pos_v = video_positions(3, 2, 2)[None]
    pos_s = semantic_positions(torch.tensor([[1.0]]), 2, 2, 2, 2)
    cos_v, sin_v = model.rope(pos_v)
    cos_s, sin_s = model.rope(pos_s)
    torch.testing.assert_close(cos_s, cos_v[:, 4:8])
    torch.testing.assert_close(sin_s, sin_v[:, 4:8])


def test_default_semantic_times():
    torch.testing.assert_close(semantic_latent_times(4, 4), torch.tensor([0.0, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(semantic_latent_times(2, 10), torch.tensor([2.0, 7.0]))
    # Qwen2.5-VL: 2 frames at 1.6 fps per semantic frame; latents at 16 fps / 4 = 4 per second
    torch.testing.assert_close(semantic_times_from_fps(2, 1.6, 4.0), torch.tensor([1.25, 6.25]))


def test_text_mask_defaults_to_wan_and_masks_padding():
    torch.manual_seed(0)
    model = DiT(preset("tiny", in_channels=4, text_dim=16)).eval()
    torch.nn.init.normal_(model.head.weight)
    x, t = torch.randn(1, 4, 2, 4, 4), torch.rand(1)
    text = torch.randn(1, 6, 16)
    mask = torch.tensor([[True, True, True, False, False, False]])
    torch.testing.assert_close(model(x, t, text, text_mask=torch.ones(1, 6, dtype=torch.bool)), model(x, t, text))
    padded = text.clone()
    padded[:, 3:] = torch.randn(1, 3, 16)  # changing masked tokens changes nothing
    torch.testing.assert_close(model(x, t, text, text_mask=mask), model(x, t, padded, text_mask=mask))


def test_forward_rejects_bad_shapes():
    model = DiT(preset("tiny", in_channels=4, text_dim=16))
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 3, 2, 4, 4), torch.rand(1), torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 4, 2, 5, 4), torch.rand(1), torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="semantic_dim=0"):
        model(torch.randn(1, 4, 2, 4, 4), torch.rand(1), torch.randn(1, 2, 16), semantic=torch.randn(1, 1, 1, 1, 8))
    with pytest.raises(ValueError, match="text_mask"):
        model(torch.randn(1, 4, 2, 4, 4), torch.rand(1), torch.randn(1, 2, 16), text_mask=torch.zeros(1, 2, dtype=torch.bool))


def test_forward_rejects_bad_semantic_inputs():
    model = DiT(preset("tiny", in_channels=4, text_dim=16, semantic_dim=8))
    x, t, text = torch.randn(2, 4, 2, 4, 4), torch.rand(2), torch.randn(2, 2, 16)
    for bad in (torch.randn(2, 1, 1, 8), torch.randn(1, 1, 1, 1, 8), torch.randn(2, 1, 1, 1, 4)):  # rank, batch, width
        with pytest.raises(ValueError, match=r"semantic must be \(B=2, Ts, hs, ws, 8\)"):
            model(x, t, text, semantic=bad)
    with pytest.raises(ValueError, match="2 entries for 1 semantic frames"):
        model(x, t, text, semantic=torch.randn(2, 1, 1, 1, 8), semantic_times=torch.tensor([0.0, 1.0]))


def test_resize_patch_keeps_tokens_of_block_constant_input():
    """resize_patch: on input constant over each old 2x2 patch, every new 1x1 token embeds as the
    old token did, and each new head output is the mean of the old outputs over the patch."""
    from semgen_cli.models.dit import resize_patch

    torch.manual_seed(0)
    old = DiT(preset("tiny", in_channels=4, text_dim=8, semantic_dim=0, patch=(1, 2, 2)))
    for p in old.parameters():
        torch.nn.init.normal_(p)
    new = DiT(preset("tiny", in_channels=4, text_dim=8, semantic_dim=0, patch=(1, 1, 1)))
    state = resize_patch(old.state_dict(), (1, 2, 2), (1, 1, 1))
    new.load_state_dict(state)
    blocks = torch.randn(1, 4, 2, 3, 3)
    x = blocks.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)  # (1, 4, 2, 6, 6), constant per 2x2
    e_old = old.patch_embed(x)  # (1, D, 2, 3, 3)
    e_new = new.patch_embed(x)  # (1, D, 2, 6, 6)
    torch.testing.assert_close(e_new, e_old.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4))
    h = torch.randn(5, old.config.dim)
    want = old.head(h).reshape(5, 2, 2, 4).mean(dim=(1, 2))  # rows in (pt, ph, pw, C) order
    torch.testing.assert_close(new.head(h), want)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in new.state_dict().items()}
    resized = {"patch_embed.weight", "head.weight", "head.bias"}
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in state.items() if k not in resized)  # blocks kept
    with pytest.raises(ConfigError, match="cannot be resized"):
        resize_patch(old.state_dict(), (1, 2, 2), (1, 3, 3))

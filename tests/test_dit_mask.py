"""The DiT's video key-padding mask (stage 2 batches clips of different lengths, padded at the end)."""

from __future__ import annotations

import pytest
import torch

from semgen_cli.models import DiT, DiTConfig
from semgen_cli.models.attention import attention, window_plan
from semgen_cli.models.dit import frame_mask_to_token_mask

C, H, W, TEXT = 8, 3, 4, 16


def _model(**overrides) -> DiT:
    """A small stage-2-like DiT (patch (1, 1, 1), full attention) with every weight random, so
    the zero-initialised head and gates do not hide anything."""
    cfg = dict(in_channels=C, patch=(1, 1, 1), dim=24, layers=2, heads=2, ffn_dim=32, text_dim=TEXT, freq_dim=32)
    cfg.update(overrides)
    torch.manual_seed(0)
    model = DiT(DiTConfig(**cfg)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _sample(T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, C, T, H, W, generator=g), torch.rand(1, generator=g), torch.randn(1, 5, TEXT, generator=g)


def _padded_batch(lengths, T_max, seed=0):
    """Samples of `lengths` frames padded with large garbage to `T_max`, plus their frame mask."""
    g = torch.Generator().manual_seed(1000 + seed)
    xs, ts, texts, singles = [], [], [], []
    for i, T in enumerate(lengths):
        x, t, text = _sample(T, seed + i)
        singles.append((x, t, text))
        pad = 100.0 * torch.randn(1, C, T_max - T, H, W, generator=g)
        xs.append(torch.cat([x, pad], dim=2))
        ts.append(t)
        texts.append(text)
    frame_mask = torch.arange(T_max)[None] < torch.tensor(lengths)[:, None]  # (B, T_max)
    return torch.cat(xs), torch.cat(ts), torch.cat(texts), frame_mask, singles


def test_frame_mask_to_token_mask_is_time_major():
    fm = torch.tensor([[True, True, False], [True, False, False]])
    tm = frame_mask_to_token_mask(fm, 2, 3)
    assert tm.shape == (2, 18) and tm.dtype == torch.bool
    assert tm[0].tolist() == [True] * 12 + [False] * 6
    assert tm[1].tolist() == [True] * 6 + [False] * 12
    # the DiT's token order: patch_embed(x).flatten(2) over (T, H, W)
    grid = torch.zeros(1, 3, 2, 3, dtype=torch.bool)
    grid[:, :2] = True
    assert torch.equal(grid.flatten(1), tm[:1])


def test_all_true_mask_equals_no_mask():
    model = _model()
    x, t, text = _sample(4, 0)
    x, t, text = x.repeat(2, 1, 1, 1, 1), t.repeat(2), text.repeat(2, 1, 1)
    with torch.no_grad():
        ref = model(x, t, text)
        out = model(x, t, text, token_mask=torch.ones(2, 4 * H * W, dtype=torch.bool))
    torch.testing.assert_close(out, ref)
    # and the masked kernel itself (the DiT skips an all-True mask) agrees with the unmasked one
    q, k, v = torch.randn(3, 2, 2, 7, 6).unbind(0)
    torch.testing.assert_close(attention(q, k, v, key_mask=torch.ones(2, 7, dtype=torch.bool)), attention(q, k, v))


def test_padded_sample_matches_unpadded():
    """Real-token outputs of a T=3 clip padded (with garbage) to T=5 equal those of the clip alone."""
    model = _model()
    x, t, text, frame_mask, singles = _padded_batch([3, 5, 1], 5)
    token_mask = frame_mask_to_token_mask(frame_mask, H, W)
    with torch.no_grad():
        out = model(x, t, text, token_mask=token_mask)
        for b, (xs, ts, texts) in enumerate(singles):
            T = xs.shape[2]
            ref = model(xs, ts, texts)
            torch.testing.assert_close(out[b : b + 1, :, :T], ref, atol=1e-5, rtol=1e-5)
        # without the mask the garbage would leak into the real tokens
        leaky = model(x, t, text)
        assert not torch.allclose(leaky[:1, :, :3], model(*singles[0]), atol=1e-3)


def test_padded_sample_with_semantic_tokens_matches_unpadded():
    """With in-context semantic tokens (always real) and full attention the mask still isolates the padding."""
    model = _model(semantic_dim=3)
    x, t, text, frame_mask, singles = _padded_batch([3, 5], 5, seed=7)
    g = torch.Generator().manual_seed(3)
    sem = torch.randn(2, 2, 2, 2, 3, generator=g)
    times = torch.tensor([0.5, 2.0])  # explicit: the default spreads over the (padded) T
    with torch.no_grad():
        out = model(x, t, text, semantic=sem, semantic_sigma=torch.tensor([0.2, 0.2]), semantic_times=times,
                    token_mask=frame_mask_to_token_mask(frame_mask, H, W))
        for b, (xs, ts, texts) in enumerate(singles):
            ref = model(xs, ts, texts, semantic=sem[b : b + 1], semantic_sigma=torch.tensor([0.2]), semantic_times=times)
            torch.testing.assert_close(out[b : b + 1, :, : xs.shape[2]], ref, atol=1e-5, rtol=1e-5)


def test_masked_outputs_and_gradients_are_finite():
    model = _model()
    model.train()
    model.gradient_checkpointing = True
    x, t, text, frame_mask, _ = _padded_batch([3, 1], 5)
    token_mask = frame_mask_to_token_mask(frame_mask, H, W)
    out = model(x, t, text, token_mask=token_mask)
    assert torch.isfinite(out).all()  # padded query positions included
    # a typical stage-2 loss: only real tokens count
    loss = (out.square().mean(1) * frame_mask[:, :, None, None]).sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_fully_masked_sample_is_refused():
    model = _model()
    x, t, text = _sample(2, 0)
    with pytest.raises(ValueError, match="every video token"):
        model(x, t, text, token_mask=torch.zeros(1, 2 * H * W, dtype=torch.bool))


def test_wrong_mask_shape_is_refused():
    model = _model()
    x, t, text = _sample(2, 0)
    with pytest.raises(ValueError, match="token_mask must be"):
        model(x, t, text, token_mask=torch.ones(1, 2 * H, dtype=torch.bool))


def test_swin_with_mask_raises():
    model = _model(attention="swin", window=2)
    x, t, text = _sample(4, 0)
    with pytest.raises(ValueError, match="full attention"):
        model(x, t, text, token_mask=torch.ones(1, 4 * H * W, dtype=torch.bool))
    q, k, v = torch.randn(3, 1, 2, 8, 6).unbind(0)
    with pytest.raises(ValueError, match="full attention"):
        attention(q, k, v, window_plan(torch.arange(4).repeat_interleave(2), 4, 2, 0), key_mask=torch.ones(1, 8, dtype=torch.bool))

"""Full vs shifted-window attention (paper §3.4): exactness, window membership, and leakage."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semgen_cli.models import DiT, preset
from semgen_cli.models.attention import attention, window_ids, window_plan


def _window_of(f, window, shift, frames=None):
    """The definition: plain windows [0, Tw), [Tw, 2Tw)...; shifted [0, s), [s, s+Tw)... (no wrap);
    a last window shorter than Tw // 2 joins the one before it."""
    w = (lambda g: (g - shift) // window + 1 if shift else g // window)
    if frames is not None and w(frames - 1) > 0 and sum(w(g) == w(frames - 1) for g in range(frames)) < window // 2:
        return min(w(f), w(frames - 1) - 1)
    return w(f)


def _masked_reference(q, k, v, slots, frames, window, shift):
    """Dense attention with an explicit same-window mask: the definition swin must match."""
    win = torch.tensor([_window_of(int(f), window, shift, frames) for f in slots])  # (L,)
    mask = win[:, None] == win[None, :]  # (L, L)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _qkv(L, seed=0, B=2, H=2, Dh=8):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, Dh, generator=g) for _ in range(3)]


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("frames", [8, 9, 10])
def test_regular_path_matches_mask_reference(shift, frames):
    T, N, Tw = frames, 3, 4
    slots = torch.arange(T).repeat_interleave(N)
    plan = window_plan(slots, T, Tw, shift)
    assert plan.perm is None  # time-major: windows are contiguous runs, no permutation
    if shift:  # half windows at both ends (T = 8), or a half window then the rest (T = 10)
        assert plan.groups == {8: ((1, 2 * N), (1, 4 * N), (1, 2 * N)), 9: ((1, 2 * N), (1, 4 * N), (1, 3 * N)),
                               10: ((1, 2 * N), (2, 4 * N))}[T]
    q, k, v = _qkv(T * N)
    torch.testing.assert_close(attention(q, k, v, plan), _masked_reference(q, k, v, slots, T, Tw, shift), atol=1e-5, rtol=1e-5)


def test_window_ids_do_not_wrap():
    f = torch.arange(8)
    assert window_ids(f, 8, 4, 0).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert window_ids(f, 8, 4, 2).tolist() == [0, 0, 1, 1, 1, 1, 2, 2]  # first and last: half windows
    assert window_ids(torch.arange(7), 7, 5, 2).tolist() == [0, 0, 1, 1, 1, 1, 1]
    # a last window shorter than T_w // 2 joins the one before it; one of T_w // 2 stays
    assert window_ids(torch.arange(9), 9, 4, 0).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert window_ids(torch.arange(10), 10, 4, 0).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert window_ids(torch.arange(11), 11, 4, 2).tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    # a sequence no longer than one window is one window in both kinds of layer (as Swin does)
    assert window_plan(torch.arange(4), 4, 4, 2).shift == 0


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("frames", [8, 9, 10])  # 9, 10: a last window shorter than T_w
def test_grouped_windows_with_sparse_semantic_tokens_match_reference(shift, frames):
    N, Tw, S = 4, 4, 3  # 4 video tokens per frame, 3 tokens per semantic frame
    sem_slots = torch.tensor([1, 4, 6, 9])[: 3 if frames == 8 else 4]  # one semantic frame every ~2.5 latents
    slots = torch.cat([torch.arange(frames).repeat_interleave(N), sem_slots.repeat_interleave(S)])
    plan = window_plan(slots, frames, Tw, shift)
    assert plan.perm is not None and len(plan.groups) >= 1
    assert sum(n * length for n, length in plan.groups) == slots.numel()
    q, k, v = _qkv(slots.numel(), seed=1)
    torch.testing.assert_close(
        attention(q, k, v, plan), _masked_reference(q, k, v, slots, frames, Tw, shift), atol=1e-5, rtol=1e-5
    )


def test_each_window_holds_the_semantic_tokens_of_its_span():
    T, N, Tw, S = 12, 2, 4, 2
    sem_slots = torch.tensor([0, 3, 5, 8, 11])
    slots = torch.cat([torch.arange(T).repeat_interleave(N), sem_slots.repeat_interleave(S)])
    for shift in (0, Tw // 2):
        plan = window_plan(slots, T, Tw, shift)
        ordered = slots[plan.perm]
        start = 0
        for n, length in plan.groups:
            for _ in range(n):
                members = ordered[start : start + length]
                start += length
                w = _window_of(int(members[0]), Tw, shift, T)
                frames_in_window = {f for f in range(T) if _window_of(f, Tw, shift, T) == w}
                assert set(members.tolist()) == frames_in_window  # all its frames, nothing from elsewhere
                n_sem = sum(int((sem_slots == f).sum()) for f in frames_in_window) * S
                assert length == len(frames_in_window) * N + n_sem  # ...and all its semantic tokens


def _pair(semantic_dim=0, layers=2, window=2, seed=0):
    torch.manual_seed(seed)
    full = DiT(preset("tiny", in_channels=4, text_dim=16, semantic_dim=semantic_dim, layers=layers)).eval()
    for p in full.parameters():  # non-trivial weights everywhere (the head is zero at init)
        torch.nn.init.normal_(p, std=0.3)
    swin = DiT(preset("tiny", in_channels=4, text_dim=16, semantic_dim=semantic_dim, layers=layers, attention="swin", window=window)).eval()
    swin.load_state_dict(full.state_dict())
    return full, swin


@pytest.mark.parametrize("semantic", [False, True])
def test_swin_with_one_window_equals_full_attention(semantic):
    full, swin = _pair(semantic_dim=8 if semantic else 0, window=8)
    x, t, text = torch.randn(2, 4, 6, 4, 4), torch.rand(2), torch.randn(2, 3, 16)
    kw = dict(semantic=torch.randn(2, 2, 2, 2, 8), semantic_sigma=torch.rand(2)) if semantic else {}
    with torch.no_grad():
        torch.testing.assert_close(swin(x, t, text, **kw), full(x, t, text, **kw), atol=1e-5, rtol=1e-5)


def test_swin_with_several_windows_differs_from_full():
    full, swin = _pair(window=2)
    x, t, text = torch.randn(1, 4, 6, 4, 4), torch.rand(1), torch.randn(1, 3, 16)
    with torch.no_grad():
        assert not torch.allclose(swin(x, t, text), full(x, t, text), atol=1e-4)


@pytest.mark.parametrize("semantic", [False, True])
def test_shift_moves_information_across_window_borders(semantic):
    """Frames 0-3 vs 4-7 with T_w = 4: one unshifted layer keeps window 1 blind to a change in
    window 0; a second (shifted) layer carries it across."""
    T = 8
    x, t, text = torch.randn(1, 4, T, 4, 4), torch.rand(1), torch.randn(1, 3, 16)
    x2 = x.clone()
    x2[:, :, 0] += 1.0  # perturb latent frame 0 (window 0)
    kw = {}
    if semantic:  # two semantic frames, at latent times 1 (window 0) and 5 (window 1)
        kw = dict(semantic=torch.randn(1, 2, 2, 2, 8), semantic_times=torch.tensor([1.0, 5.0]))
    for layers, leaks in ((1, False), (2, True)):
        _, swin = _pair(semantic_dim=8 if semantic else 0, layers=layers, window=4)
        with torch.no_grad():
            a, b = swin(x, t, text, **kw), swin(x2, t, text, **kw)
        changed = (a - b).abs().amax(dim=(0, 1, 3, 4)) > 1e-6  # (T,) per latent frame
        assert changed[:4].all()
        assert bool(changed[4:].any()) == leaks


def test_semantic_token_in_window_0_does_not_reach_window_1_without_shift():
    _, swin = _pair(semantic_dim=8, layers=1, window=4)
    x, t, text = torch.randn(1, 4, 8, 4, 4), torch.rand(1), torch.randn(1, 3, 16)
    sem = torch.randn(1, 2, 2, 2, 8)
    sem2 = sem.clone()
    sem2[:, 0] += 1.0  # semantic frame at latent time 1 (window 0)
    times = torch.tensor([1.0, 5.0])
    with torch.no_grad():
        d = (swin(x, t, text, semantic=sem, semantic_times=times) - swin(x, t, text, semantic=sem2, semantic_times=times)).abs()
    per_frame = d.amax(dim=(0, 1, 3, 4))
    assert (per_frame[:4] > 1e-6).all() and (per_frame[4:] == 0).all()


def test_swin_gradients_flow_and_batch_times_must_agree():
    _, swin = _pair(semantic_dim=8, window=2)
    swin.train()
    x = torch.randn(2, 4, 4, 4, 4, requires_grad=True)
    out = swin(x, torch.rand(2), torch.randn(2, 3, 16), semantic=torch.randn(2, 2, 2, 2, 8))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="same semantic_times"):
        swin(x, torch.rand(2), torch.randn(2, 3, 16), semantic=torch.randn(2, 2, 2, 2, 8),
             semantic_times=torch.tensor([[0.0, 2.0], [1.0, 3.0]]))


@pytest.mark.parametrize("what", ["latent", "semantic"])
def test_the_end_of_the_sequence_never_reaches_its_start(what):
    """Shifted windows do not wrap round (paper §3.4 after Swin, which masks the wrapped region):
    in a swin DiT over 16 latent frames (T_w = 4), changing the last latent frame (or the last
    semantic frame) never changes frame 0's output at any depth, while after a shifted layer it
    does change frames beyond its own plain window."""
    T, Tw = 16, 4
    x, t, text = torch.randn(1, 4, T, 4, 4), torch.rand(1), torch.randn(1, 3, 16)
    sem = torch.randn(1, 4, 2, 2, 8)
    times = torch.tensor([1.5, 5.5, 9.5, 13.5])  # one semantic frame per window, the last in frames 12-15
    x2, sem2 = x.clone(), sem.clone()
    if what == "latent":
        x2[:, :, -1] += 1.0
    else:
        sem2[:, -1] += 1.0
    for layers in (1, 2, 3, 4):
        _, swin = _pair(semantic_dim=8, layers=layers, window=Tw, seed=1)
        with torch.no_grad():
            a = swin(x, t, text, semantic=sem, semantic_times=times)
            b = swin(x2, t, text, semantic=sem2, semantic_times=times)
        changed = (a - b).abs().amax(dim=(0, 1, 3, 4)) > 1e-6  # (T,) per latent frame
        assert not changed[0], f"frame 0 changed at depth {layers}"
        assert changed[-Tw:].all()
        assert bool(changed[: T - Tw].any()) == (layers >= 2)  # a shifted layer carries it across the border

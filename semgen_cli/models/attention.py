"""Attention kernels for the DiT: full attention and shifted-window ("swin") attention along time.

Paper §3.4 ("Extension to long video generation", Fig. 5): the latent generator attends within
windows of ``T_w`` latent frames; each window holds the VAE tokens of its frames *and* the
semantic tokens of the same time span; odd layers shift the windows by ``T_w/2`` so information
crosses window borders. Windows are cut from the token sequence and stacked into the batch, and
each batch of windows goes through ``F.scaled_dot_product_attention`` with no mask, so the fused
(Flash / memory-efficient) kernels apply and cost grows linearly with video length.

How tokens are assigned to windows
----------------------------------
Every token carries a *latent slot*: the latent frame index it belongs to. A video token's slot
is its frame. A semantic frame taken at latent time ``tau`` (a float: semantic frames are fewer
than latent frames, e.g. 0.8 semantic frames/s vs 4 latent frames/s) has slot
``clamp(round(tau), 0, T - 1)``; all ``hs*ws`` tokens of that semantic frame share it.

Plain layers cut the ``T`` latent frames into ``[0, T_w), [T_w, 2 T_w), ...`` (the last window
shorter when ``T_w`` does not divide ``T``). Shifted layers move the borders by ``s = T_w/2``:
``[0, s), [s, s + T_w), [s + T_w, s + 2 T_w), ...``, so the first window and (when ``T_w``
divides ``T``) the last are half windows. Slot ``f`` belongs to window
``(f + (T_w - s) mod T_w) // T_w``, except that a last window shorter than ``T_w // 2`` frames
joins the one before it (a sliver of one frame at the end of a video would otherwise hold no
semantic frame, see ``empty_windows``). Nothing wraps round: Swin's cyclic shift *masks* the wrapped
region so that the two ends of the sequence never attend to each other, and cutting the ends
into their own windows is the same partition without a mask. (A cyclic shift without that mask
would pair the first and last frames, far apart in RoPE time, a distance that training windows
never show the model.) When the whole sequence fits in one window (``T <= T_w``) the shifted
layers do not shift, as in Swin: one window, i.e. full attention. Every window holds exactly the
semantic frames whose slot falls in its span, in both kinds of layer. No mask is used anywhere.

Windows therefore differ in length (half windows at the ends, a shorter last window, and
sparse semantic frames: a window holds one or two of them). Instead of padding (which without a
mask would let pad tokens into the softmax) windows of equal length are grouped and each group
runs as one SDPA call. When there are no semantic tokens (or one semantic frame per latent
frame) the tokens are time-major and every window is a contiguous run of tokens: the plan then
needs no permutation, just consecutive runs of equal windows (at most three groups: a half
window, the full windows, the rest). Otherwise tokens are permuted window by window, windows
sorted by length. There are only a few distinct lengths, so this costs a handful of kernel
launches, and the result is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class WindowPlan:
    """How one layer's tokens are cut into attention windows.

    ``groups`` lists ``(num_windows, window_length)``: runs of equal-length windows, one SDPA call
    each, in token order after ``perm``. ``perm is None`` when tokens already lie window by window
    (time-major, no semantic tokens); else ``perm`` orders them window by window (windows sorted
    by length) and ``inverse`` undoes it.
    """

    window: int
    shift: int
    frames: int
    groups: tuple[tuple[int, int], ...] = ()
    perm: torch.Tensor | None = None
    inverse: torch.Tensor | None = None


def window_ids(slots: torch.Tensor, frames: int, window: int, shift: int) -> torch.Tensor:
    """Window of each latent slot: plain ``[0, T_w), [T_w, 2 T_w), ...``; shifted by ``s``:
    ``[0, s), [s, s + T_w), ...`` (half windows at the ends; nothing wraps round). A last window
    shorter than ``T_w // 2`` frames (what is left over when ``T_w`` does not divide the length)
    joins the one before it, so the end of a video is never a sliver of one or two frames."""
    off = (window - shift) % window
    win = torch.div(slots + off, window, rounding_mode="floor")
    last = (frames - 1 + off) // window
    if last > 0 and frames - max(0, last * window - off) < window // 2:
        win = torch.where(win == last, win - 1, win)
    return win


def _runs(lengths: list[int]) -> tuple[tuple[int, int], ...]:
    """Run-length encoding ``[4, 8, 8, 4] -> ((1, 4), (2, 8), (1, 4))``."""
    groups: list[tuple[int, int]] = []
    for n in lengths:
        if groups and groups[-1][1] == n:
            groups[-1] = (groups[-1][0] + 1, n)
        else:
            groups.append((1, n))
    return tuple(groups)


def window_plan(slots: torch.Tensor, frames: int, window: int, shift: int) -> WindowPlan:
    """Plan the windows for tokens whose latent slots are ``slots`` (L,) long in ``[0, frames)``.

    ``shift`` is ``0`` for even layers and ``window // 2`` for odd ones; it is dropped when
    ``frames <= window`` (one window holds everything, as in Swin).
    """
    if frames <= window:
        shift = 0
    L = slots.numel()
    win = window_ids(slots, frames, window, shift)  # (L,) window id, non-decreasing in the slot
    lengths = torch.bincount(win)  # (nW,) tokens per window
    if L % frames == 0:
        regular = torch.arange(frames, device=slots.device).repeat_interleave(L // frames)
        if torch.equal(slots, regular):  # time-major: each window is a contiguous run of tokens
            return WindowPlan(window, shift, frames, groups=_runs(lengths.tolist()))
    num_windows = lengths.numel()
    # order windows by (length, id), tokens by (window rank, original index): stable sorts
    window_order = torch.sort(lengths, stable=True).indices  # (nW,)
    rank = torch.empty_like(window_order)
    rank[window_order] = torch.arange(num_windows, device=slots.device)
    perm = torch.sort(rank[win], stable=True).indices  # (L,)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(L, device=slots.device)
    groups = _runs([n for n in lengths[window_order].tolist() if n])
    return WindowPlan(window, shift, frames, groups=groups, perm=perm, inverse=inverse)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: WindowPlan | None = None,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Self-attention over ``q, k, v`` (B, H, L, Dh): full when ``plan`` is None, else windowed.

    ``key_mask`` (B, L) bool, True = real token: keys where it is False are never attended (a
    boolean ``attn_mask`` (B, 1, 1, L) for SDPA). Queries are not masked, so padded positions
    still attend to the real keys and their outputs stay finite (every row needs one real key).
    Full attention only: windowed attention keeps its mask-free fused kernels.
    """
    if key_mask is not None:
        if plan is not None:
            raise ValueError("a key-padding mask is only supported with full attention (plan=None), not windowed attention")
        B, _, L, _ = k.shape
        if tuple(key_mask.shape) != (B, L):
            raise ValueError(f"key_mask must be (B, L) = {(B, L)}, got {tuple(key_mask.shape)}")
        attn_mask = key_mask.to(device=q.device, dtype=torch.bool)[:, None, None, :]  # (B, 1, 1, L)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, L, Dh)
    if plan is None:
        return F.scaled_dot_product_attention(q, k, v)  # (B, H, L, Dh)
    return _grouped_windows(q, k, v, plan)


def _grouped_windows(q, k, v, plan: WindowPlan) -> torch.Tensor:
    B, H, L, Dh = q.shape
    if len(plan.groups) == 1 and plan.perm is None:  # one run of equal windows: no split, no cat
        return _windows(q, k, v, *plan.groups[0])
    sizes = [n * length for n, length in plan.groups]
    if plan.perm is not None:
        q, k, v = (x[:, :, plan.perm] for x in (q, k, v))
    outs = [_windows(qg, kg, vg, n, length)
            for (n, length), qg, kg, vg in zip(plan.groups, q.split(sizes, 2), k.split(sizes, 2), v.split(sizes, 2), strict=True)]
    out = torch.cat(outs, dim=2)  # (B, H, L, Dh)
    return out if plan.perm is None else out[:, :, plan.inverse]


def _windows(q, k, v, n: int, length: int) -> torch.Tensor:
    """SDPA within each of ``n`` consecutive windows of ``length`` tokens: (B, H, n*length, Dh) -> same."""
    B, H, _, Dh = q.shape

    def split(x):  # (B, H, n*length, Dh) -> (B*n, H, length, Dh)
        return x.reshape(B, H, n, length, Dh).transpose(1, 2).reshape(B * n, H, length, Dh)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))  # (B*n, H, length, Dh)
    return out.reshape(B, n, H, length, Dh).transpose(1, 2).reshape(B, H, n * length, Dh)

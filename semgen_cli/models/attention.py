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
``clamp(round(tau), 0, T - 1)``; all ``hs*ws`` tokens of that semantic frame share it. With shift
``s``, slot ``f`` sits at rolled position ``(f - s) mod T`` (exactly ``torch.roll(-s)`` on the
frame axis) and window ``(f - s) mod T // T_w``. So every window of ``T_w`` latent frames
contains exactly the semantic frames whose time falls in its span, in both the plain and the
shifted layers; like the roll in Swin, the last shifted window wraps round and joins the last
``s`` frames with the first ``s``. No mask is used anywhere.

The number of tokens per window is regular when there are no semantic tokens (or one semantic
frame per latent frame) and ``T`` is a multiple of ``T_w``: then the plan is literally
``torch.roll`` + ``view`` on ``(B, T, N_per_frame, D)`` (the fast path below). Otherwise (sparse
semantic frames, or a last window shorter than ``T_w``) windows differ in length; instead of
padding (which without a mask would let pad tokens into the softmax) windows of equal length are
grouped and each group runs as one SDPA call. There are only a few distinct lengths (a window
holds one or two semantic frames, plus a possibly shorter last window), so this costs a handful
of kernel launches, and the result is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class WindowPlan:
    """How one layer's tokens are cut into attention windows.

    Either a regular roll plan (``perm is None``: tokens are time-major, ``frames`` frames of
    ``per_frame`` tokens each, windows of ``window`` frames after rolling by ``-shift``), or a
    general plan: ``perm`` orders tokens window by window (windows sorted by length), ``inverse``
    undoes it, and ``groups`` lists ``(num_windows, window_length)`` in that order.
    """

    window: int
    shift: int
    frames: int
    per_frame: int = 0
    perm: torch.Tensor | None = None
    inverse: torch.Tensor | None = None
    groups: tuple[tuple[int, int], ...] = ()


def window_plan(slots: torch.Tensor, frames: int, window: int, shift: int) -> WindowPlan:
    """Plan the windows for tokens whose latent slots are ``slots`` (L,) long in ``[0, frames)``.

    ``shift`` is ``0`` for even layers and ``window // 2`` for odd ones.
    """
    L = slots.numel()
    if frames % window == 0 and L % frames == 0:
        per_frame = L // frames
        regular = torch.arange(frames, device=slots.device).repeat_interleave(per_frame)
        if torch.equal(slots, regular):
            return WindowPlan(window=window, shift=shift, frames=frames, per_frame=per_frame)
    rolled = torch.remainder(slots - shift, frames)  # (L,) position after torch.roll(-shift)
    win = torch.div(rolled, window, rounding_mode="floor")  # (L,) window id
    num_windows = int(win.max().item()) + 1
    lengths = torch.bincount(win, minlength=num_windows)  # (nW,)
    # order windows by (length, id), tokens by (window rank, original index): stable sorts
    window_order = torch.sort(lengths, stable=True).indices  # (nW,)
    rank = torch.empty_like(window_order)
    rank[window_order] = torch.arange(num_windows, device=slots.device)
    perm = torch.sort(rank[win], stable=True).indices  # (L,)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(L, device=slots.device)
    groups: list[tuple[int, int]] = []
    for n in lengths[window_order].tolist():
        if groups and groups[-1][1] == n:
            groups[-1] = (groups[-1][0] + 1, n)
        else:
            groups.append((1, n))
    return WindowPlan(window, shift, frames, perm=perm, inverse=inverse, groups=tuple(groups))


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
    if plan.perm is None:
        return _roll_windows(q, k, v, plan)
    return _grouped_windows(q, k, v, plan)


def _roll_windows(q, k, v, plan: WindowPlan) -> torch.Tensor:
    B, H, L, Dh = q.shape
    T, N, Tw, s = plan.frames, plan.per_frame, plan.window, plan.shift
    nW = T // Tw

    def split(x):  # (B, H, L, Dh) -> (B*nW, H, Tw*N, Dh)
        x = x.reshape(B, H, T, N, Dh)
        if s:
            x = torch.roll(x, shifts=-s, dims=2)
        x = x.reshape(B, H, nW, Tw * N, Dh).transpose(1, 2)  # (B, nW, H, Tw*N, Dh)
        return x.reshape(B * nW, H, Tw * N, Dh)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))  # (B*nW, H, Tw*N, Dh)
    out = out.reshape(B, nW, H, Tw * N, Dh).transpose(1, 2).reshape(B, H, T, N, Dh)
    if s:
        out = torch.roll(out, shifts=s, dims=2)
    return out.reshape(B, H, L, Dh)


def _grouped_windows(q, k, v, plan: WindowPlan) -> torch.Tensor:
    B, H, L, Dh = q.shape
    sizes = [n * length for n, length in plan.groups]
    qs, ks, vs = (x[:, :, plan.perm].split(sizes, dim=2) for x in (q, k, v))
    outs = []
    for (n, length), qg, kg, vg in zip(plan.groups, qs, ks, vs):

        def split(x):  # (B, H, n*length, Dh) -> (B*n, H, length, Dh)
            return x.reshape(B, H, n, length, Dh).transpose(1, 2).reshape(B * n, H, length, Dh)

        og = F.scaled_dot_product_attention(split(qg), split(kg), split(vg))  # (B*n, H, length, Dh)
        outs.append(og.reshape(B, n, H, length, Dh).transpose(1, 2).reshape(B, H, n * length, Dh))
    return torch.cat(outs, dim=2)[:, :, plan.inverse]  # (B, H, L, Dh)

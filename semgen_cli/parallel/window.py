"""Window-parallel stage 1: a shifted-window DiT split across ranks by whole windows.

Paper §3.4 (Fig. 5): stage 1 attends within windows of ``T_w`` latent frames that hold the VAE
tokens of their frames and the semantic tokens of the same span; odd layers shift the windows by
``T_w/2``. No token of a layer looks beyond its window, so the sequence splits across ranks by
whole *plain* windows (semantic tokens travel with the window of their latent slot,
:func:`semgen_cli.models.attention.window_ids`):

- plain (even) layers: every window of a rank is whole on that rank; attention runs locally;
- shifted (odd) layers: the window straddling a rank border has its left part on one rank and its
  right part on the next. Each rank sends the tokens it holds of that window (the self-attention
  input, half a window: ``T_w/2`` frames of video tokens plus their semantic tokens) to the
  neighbour and receives the neighbour's part (``isend``/``irecv``, point to point), runs the
  windows of its tokens plus the received ones, and keeps the outputs of its own tokens. The
  straddling window is thus computed on both ranks (one window per border, the price of a single
  exchange per layer instead of two);
- text cross-attention, the feed-forward and the AdaLN modulation are per token: local;
- the output head runs on the rank's video tokens and the velocities are all-gathered, so every
  rank holds the whole prediction and the Euler loop, CFG and the VAE decode are unchanged.

The windows are those of the single process exactly: non-cyclic, half windows at the ends, a last
sliver joined to the window before it (the assignment is computed from the global slots with the
very functions the single-process plan uses), so the result equals one process's up to the order
of floating-point sums.

:class:`WindowShard` is attached to a :class:`~semgen_cli.models.dit.DiT` as ``dit.shard``; the
DiT hands it its tokens after the embeddings (``enter``) and its head output (``leave``), and the
self-attention of a shifted layer calls :meth:`HaloPlan.around`. Nothing else in the DiT changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from semgen_cli.models.attention import WindowPlan, window_ids, window_plan


def plain_windows(frames: int, window: int) -> int:
    """How many plain (unshifted) windows a stage-1 sequence of ``frames`` latent frames has."""
    if frames <= window:
        return 1
    last = (frames - 1) // window  # as window_ids: a last window under window // 2 frames joins the one before
    return last if last > 0 and frames - last * window < window // 2 else last + 1


def rank_frames(frames: int, window: int, ranks: int) -> list[tuple[int, int]]:
    """The latent frames ``[lo, hi)`` of each rank: consecutive runs of whole plain windows, the
    first ranks taking one window more when they do not divide evenly."""
    n = plain_windows(frames, window)
    if ranks > n:
        raise ValueError(f"{frames} latent frames make {n} windows of {window}: at most {n} window ranks, got {ranks}")
    ids = window_ids(torch.arange(frames), frames, window, 0) if frames > window else torch.zeros(frames, dtype=torch.long)
    base, extra = divmod(n, ranks)
    out, w = [], 0
    for r in range(ranks):
        w_hi = w + base + (r < extra)
        inside = ((ids >= w) & (ids < w_hi)).nonzero().squeeze(1)
        out.append((int(inside[0]), int(inside[-1]) + 1))
        w = w_hi
    return out


@dataclass
class HaloPlan:
    """A shifted layer's windows on one rank: ``around`` exchanges the straddling windows' parts
    with the neighbours, attends over local + received tokens, and keeps the local outputs."""

    shard: "WindowShard"
    windows: WindowPlan
    """The windows of the local tokens and both halos, in global token order (whole windows)."""
    rope: tuple[torch.Tensor, torch.Tensor]
    """RoPE (cos, sin) of those tokens, in the same order."""
    send_left: torch.Tensor
    send_right: torch.Tensor
    """Positions of the local tokens the left / right neighbour needs (maybe empty)."""
    n_left: int
    n_right: int
    order: torch.Tensor
    """Where [left halo, local, right halo] go in the extended sequence, which keeps the global
    token order (so each window's keys come in the order one process gives them)."""

    def around(self, attn, x: torch.Tensor) -> torch.Tensor:
        """Self-attention ``attn`` (a DiT ``Attention``) of the local tokens ``x`` (B, L, D)."""
        left, right = self.shard.exchange(x, self.send_left, self.send_right, self.n_left, self.n_right)
        ext = x.new_empty(x.shape[0], len(self.order), x.shape[2])
        ext[:, self.order] = torch.cat([left, x, right], dim=1)  # (B, n_left + L + n_right, D) in global order
        out = attn(ext, rope=self.rope, plan=self.windows)  # (B, n_left + L + n_right, D)
        return out[:, self.order[self.n_left : self.n_left + x.shape[1]]]  # (B, L, D), the local tokens


@dataclass
class _Layout:
    """Where the tokens of one sequence live, computed once per sequence shape."""

    slots: torch.Tensor
    frames: int
    window: int
    split: tuple[int, ...]
    local: torch.Tensor
    """Global indices of this rank's tokens: its video tokens (a contiguous run), then its semantic tokens."""
    local_split: tuple[int, ...]
    video_counts: list[int]
    """Video tokens of every rank (for the gather)."""
    plain: WindowPlan
    ext: torch.Tensor
    """Global indices of the tokens of the shifted layers (halos and local), in global order."""
    shifted: WindowPlan
    send_left: torch.Tensor
    send_right: torch.Tensor
    n_left: int
    n_right: int
    order: torch.Tensor
    """Position in ``ext`` of each of [left halo, local, right halo]."""


class WindowShard:
    """This rank's windows of a swin DiT inside a process group of window ranks.

    ``bytes_sent`` counts the payload this rank sends (halo exchanges and its share of the output
    gather), for the benchmark and the docs' formula."""

    def __init__(self, group=None) -> None:
        self.group = group
        self.index = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.ranks = dist.get_process_group_ranks(group) if group is not None else list(range(self.size))
        self.bytes_sent = 0
        self.halo_bytes = 0
        self._layout: _Layout | None = None

    # -- the DiT's hooks ------------------------------------------------------------------------------
    def enter(self, h, rope, slots, split, frames: int, window: int):
        """This rank's part of the sequence ``h`` (B, L, D): (h, rope, split, (plain plan, shifted plan))."""
        if not window:
            raise ValueError("window-parallel needs shifted-window (swin) attention")
        lay = self._layout_for(slots, frames, window, split)
        cos, sin = rope
        local_rope = (cos[:, lay.local], sin[:, lay.local])
        halo = HaloPlan(self, lay.shifted, (cos[:, lay.ext], sin[:, lay.ext]), lay.send_left, lay.send_right, lay.n_left, lay.n_right, lay.order)
        return h[:, lay.local], local_rope, lay.local_split, (lay.plain, halo)

    def leave(self, out: torch.Tensor) -> torch.Tensor:
        """The head output of every rank's video tokens, (B, n_local, P) -> (B, Nv, P), in order."""
        counts = self._layout.video_counts
        B, n, P = out.shape
        buf = out.new_zeros(B, max(counts), P)
        buf[:, :n] = out
        parts = [torch.empty_like(buf) for _ in range(self.size)]
        dist.all_gather(parts, buf.contiguous(), group=self.group)
        self.bytes_sent += buf.numel() * buf.element_size() * (self.size - 1)
        return torch.cat([p[:, :c] for p, c in zip(parts, counts, strict=True)], dim=1)  # (B, Nv, P)

    def exchange(self, x, send_left, send_right, n_left: int, n_right: int):
        """Send the neighbours their parts of the straddling windows, receive theirs (B, n, D)."""
        B, _, D = x.shape
        left, right = x.new_empty(B, n_left, D), x.new_empty(B, n_right, D)
        ops = []
        for peer, send, recv in ((self.index - 1, send_left, left), (self.index + 1, send_right, right)):
            if len(send):
                buf = x[:, send].contiguous()
                ops.append(dist.P2POp(dist.isend, buf, self.ranks[peer], self.group))
                sent = buf.numel() * buf.element_size()
                self.bytes_sent += sent
                self.halo_bytes += sent
            if recv.shape[1]:
                ops.append(dist.P2POp(dist.irecv, recv, self.ranks[peer], self.group))
        if ops:
            for req in dist.batch_isend_irecv(ops):
                req.wait()
        return left, right

    # -- the layout ---------------------------------------------------------------------------------
    def _layout_for(self, slots, frames: int, window: int, split) -> _Layout:
        lay = self._layout
        if lay is not None and (lay.frames, lay.window, lay.split) == (frames, window, tuple(split)) and torch.equal(lay.slots, slots):
            return lay
        self._layout = lay = layout(slots, frames, window, tuple(split), self.index, self.size)
        return lay


def layout(slots: torch.Tensor, frames: int, window: int, split: tuple[int, ...], index: int, size: int) -> _Layout:
    """Rank ``index`` of ``size``: its tokens, its plain windows, and the halos of its shifted layers."""
    device = slots.device
    bounds = rank_frames(frames, window, size)
    starts = torch.tensor([lo for lo, _ in bounds], device=device)
    owner = torch.searchsorted(starts, slots, right=True) - 1  # (L,) rank of each token
    idx = [(owner == r).nonzero().squeeze(1) for r in range(size)]
    nv = split[0]
    video_counts = [int((i < nv).sum()) for i in idx]
    local = idx[index]
    local_split = (video_counts[index], len(local) - video_counts[index])[: len(split)]

    shift = window // 2
    w1 = window_ids(slots, frames, window, shift)  # (L,) shifted window of each token
    w1f = window_ids(torch.arange(frames, device=device), frames, window, shift)  # (T,) of each frame

    def straddling(r: int) -> int | None:
        """The shifted window across the border between ranks r and r + 1, or None."""
        b = bounds[r + 1][0]
        if int(w1f[b - 1]) != int(w1f[b]):
            return None
        wb = int(w1f[b])
        span = (w1f == wb).nonzero().squeeze(1)
        if int(span[0]) < bounds[r][0] or int(span[-1]) >= bounds[r + 1][1]:
            raise ValueError(f"a shifted window spans more than two ranks at {frames} latent frames; use at most {max(1, size - 1)} window ranks")
        return wb

    empty = torch.zeros(0, dtype=torch.long, device=device)
    left_g, right_g, send_left, send_right = empty, empty, empty, empty
    if index > 0 and (wb := straddling(index - 1)) is not None:
        left_g = idx[index - 1][w1[idx[index - 1]] == wb]
        send_left = (w1[local] == wb).nonzero().squeeze(1)
    if index < size - 1 and (wb := straddling(index)) is not None:
        right_g = idx[index + 1][w1[idx[index + 1]] == wb]
        send_right = (w1[local] == wb).nonzero().squeeze(1)
    ext, order = torch.sort(torch.cat([left_g, local, right_g]))  # global order; order: where each part went
    where = torch.empty_like(order)
    where[order] = torch.arange(len(order), device=device)
    return _Layout(
        slots=slots, frames=frames, window=window, split=split, local=local, local_split=local_split, video_counts=video_counts,
        plain=window_plan(slots[local], frames, window, 0), ext=ext, shifted=window_plan(slots[ext], frames, window, shift),
        send_left=send_left, send_right=send_right, n_left=len(left_g), n_right=len(right_g), order=where,
    )

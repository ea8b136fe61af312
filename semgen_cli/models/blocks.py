"""The layers of semgen's video DiT (``semgen_cli.models.dit``): embeddings, 3D RoPE, attention
and the transformer block.

Paper §3.1 and appendix A: the base model's block is 3D self-attention, text cross-attention and
a feed-forward network, each preceded by a normalisation, with timestep modulation (AdaLN) of the
self-attention and FFN. The layout and numerics follow diffusers' ``WanTransformer3DModel``
(float32 norms, modulation and residual sums; RoPE angles in float64) so that Wan2.1 weights give
Wan's outputs bit for bit. With in-context semantic tokens (§3.2) a block modulates two token
segments, the video tokens and then the semantic tokens, each with its own shift, scale and gate
(:func:`modulate`, :func:`gate`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from semgen_cli.models.attention import WindowPlan, attention

if TYPE_CHECKING:
    from semgen_cli.models.dit import DiTConfig

# ----------------------------------------------------------------------------- embeddings


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) values, ``[cos, sin]`` order as in Wan -> (B, dim) float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLPEmbedder(nn.Module):
    """Linear -> activation -> Linear (the timestep and text embedders)."""

    def __init__(self, in_dim: int, dim: int, act: nn.Module):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim)
        self.act = act
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RoPE3D(nn.Module):
    """3D rotary embedding: the head dim is split into t/h/w parts (h = w = 2*(Dh//6), t = rest),
    each rotated by its own axis position with frequencies ``theta ** (-2i / part)``."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        hw = 2 * (head_dim // 6)
        self.parts = (head_dim - 2 * hw, hw, hw)
        self.theta = theta

    def forward(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pos`` (..., L, 3) positions (t, h, w) -> cos, sin (..., L, Dh/2) float32."""
        # float64 angles as Wan's table, so long/fractional positions stay exact; MPS has no float64
        f64 = torch.float32 if pos.device.type == "mps" else torch.float64
        angles = []
        for axis, part in enumerate(self.parts):
            inv = 1.0 / (self.theta ** (torch.arange(0, part, 2, dtype=f64, device=pos.device) / part))
            angles.append(pos[..., axis : axis + 1].to(f64) * inv)  # (..., L, part/2)
        angles = torch.cat(angles, dim=-1)  # (..., L, Dh/2)
        return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` (B, H, L, Dh) by ``rope`` cos, sin (B|1, L, Dh/2)."""
    cos, sin = (r.unsqueeze(1) for r in rope)  # (B|1, 1, L, Dh/2)
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, H, L, Dh/2) each
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, H, L, Dh/2, 2)
    return out.flatten(-2).type_as(x)




# ----------------------------------------------------------------------------- layers


class LayerNormFP32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the parameter / activation dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)


class Attention(nn.Module):
    """Multi-head attention with RMSNorm on q and k over the full width (Wan's qk norm).

    Self-attention when ``context`` is None (RoPE and the window plan apply), else cross-attention
    on ``context``; either takes an optional key-padding mask (self-attention: full only).
    """

    def __init__(self, dim: int, heads: int, eps: float, qk_norm: str | None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        plan: WindowPlan | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if context is None and hasattr(plan, "around"):  # window-parallel: windows that straddle ranks (semgen_cli/parallel/window.py)
            return plan.around(self, x)
        B, L, D = x.shape
        src = x if context is None else context
        q = self.q_norm(self.q(x)).view(B, L, self.heads, -1).transpose(1, 2)  # (B, H, L, Dh)
        k = self.k_norm(self.k(src)).view(B, src.shape[1], self.heads, -1).transpose(1, 2)  # (B, H, S, Dh)
        v = self.v(src).view(B, src.shape[1], self.heads, -1).transpose(1, 2)  # (B, H, S, Dh)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        if context is None:
            out = attention(q, k, v, plan, key_mask=mask)  # (B, H, L, Dh)
        else:
            attn_mask = None if mask is None else mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, S)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, L, Dh)
        return self.o(out.transpose(1, 2).reshape(B, L, D))


class FeedForward(nn.Module):
    """Wan's feed-forward network: Linear -> tanh-GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))



# ----------------------------------------------------------------------------- modulation


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, split: tuple[int, ...]) -> torch.Tensor:
    """AdaLN modulation ``x * (1 + scale) + shift``, each token segment with its own parameters.

    ``x`` (B, L, D) holds the segments of lengths ``split`` one after the other (video tokens,
    then semantic tokens); ``shift`` and ``scale`` are (B, S, D), one row per segment."""
    if shift.shape[1] == 1:
        return x * (1 + scale) + shift
    parts = x.split(split, dim=1)  # S x (B, L_s, D)
    return torch.cat([xs * (1 + scale[:, i, None]) + shift[:, i, None] for i, xs in enumerate(parts)], dim=1)


def gate(x: torch.Tensor, gates: torch.Tensor, split: tuple[int, ...]) -> torch.Tensor:
    """``x * gates`` with each token segment's own gate: ``x`` (B, L, D), ``gates`` (B, S, D)."""
    if gates.shape[1] == 1:
        return x * gates
    parts = x.split(split, dim=1)  # S x (B, L_s, D)
    return torch.cat([xs * gates[:, i, None] for i, xs in enumerate(parts)], dim=1)


class DiTBlock(nn.Module):
    """Self-attention, text cross-attention and FFN; AdaLN modulation (shift, scale, gate) of the
    self-attention and FFN from a learned table plus the shared timestep projection (as Wan)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D = cfg.dim
        self.norm1 = LayerNormFP32(D, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = Attention(D, cfg.heads, cfg.eps, cfg.qk_norm)
        self.cross_norm = LayerNormFP32(D, eps=cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = Attention(D, cfg.heads, cfg.eps, cfg.qk_norm)
        self.norm3 = LayerNormFP32(D, eps=cfg.eps, elementwise_affine=False)
        self.ffn = FeedForward(D, cfg.ffn_dim)
        self.modulation = nn.Parameter(torch.randn(1, 6, D) / D**0.5)

    def forward(self, x, context, mod, split, rope, plan=None, text_mask=None, key_mask=None):
        """``x`` (B, L, D); ``mod`` (B, S, 6, D) per token segment (S = 1 or 2); ``split`` lengths;
        ``key_mask`` (B, L) bool self-attention key-padding mask (True = real) or None."""
        params = (self.modulation[:, None] + mod.float()).unbind(2)  # 6 x (B, S, D), float32
        attn_shift, attn_scale, attn_gate, ffn_shift, ffn_scale, ffn_gate = params

        # 1. Self-attention (full or windowed), AdaLN-modulated and gated
        h = modulate(self.norm1(x), attn_shift, attn_scale, split)
        h = self.self_attn(h.type_as(x), rope=rope, plan=plan, mask=key_mask)
        x = (x.float() + gate(h, attn_gate, split)).type_as(x)

        # 2. Text cross-attention
        h = self.cross_norm(x.float()).type_as(x)
        x = x + self.cross_attn(h, context=context, mask=text_mask)

        # 3. Feed-forward, AdaLN-modulated and gated
        h = modulate(self.norm3(x), ffn_shift, ffn_scale, split)
        h = self.ffn(h.type_as(x))
        return (x.float() + gate(h.float(), ffn_gate, split)).type_as(x)

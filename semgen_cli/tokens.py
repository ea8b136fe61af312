"""What the semantic compressor reads, and the statistics of its space over a data set.

Paper §3.2: the compressor maps semantic features to a small Gaussian space. For the
compressed-VAE ablation of paper Fig. 9 ("keep the SemanticGen framework, only replace the
semantic encoder by the VAE encoder") it reads VAE latents instead, cut into the semantic tokens'
own grid and rate (:class:`VaeLayout`): one condition token per semantic token, holding the
latents of the same time span and image cell, flattened (docs/baselines.md). `fit-compressor`,
`train-latent`, `train-semantic` and `generate` all read tokens through this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from semgen_cli.errors import InputError, MismatchError
from semgen_cli.geometry import ClipGeometry


@dataclass(frozen=True)
class VaeLayout:
    """VAE latents as tokens on the semantic tokens' grid and rate (the Fig. 9 ablation's input).

    Semantic token j covers latent frames ``[j·ρ, (j+1)·ρ)`` (ρ = `latents_per_token`, the span
    stage 1's training windows align to) and one cell of an ``hs × ws`` grid over the whole
    frame. Its VAE counterpart is that block of the latents, area-resampled to ``cell`` = (r, a, b)
    = (⌈ρ⌉, ⌈h/hs⌉, ⌈w/ws⌉) latent frames × rows × columns and flattened to ``C·r·a·b`` channels:
    where ρ, h/hs and w/ws are whole numbers this is an exact space-to-depth (nothing pooled
    away), and the MLP compresses it as it compresses a semantic feature. A last token that runs
    past the clip's end (the semantic encoder pads its last temporal patch) reads the last frames."""

    grid: tuple[int, int]
    """(hs, ws) of the semantic tokens."""
    cell: tuple[int, int, int]
    """(r, a, b): latent frames, rows and columns resampled into one token."""
    latents_per_token: Fraction
    """ρ: latent frames one semantic token spans."""

    @property
    def dim(self) -> int:
        """Channels of a token for C latent channels is C · dim."""
        return math.prod(self.cell)

    @classmethod
    def of_data(cls, data) -> "VaeLayout":
        """The layout of a shard folder: its semantic grid and rates, its latent size."""
        fields = data.fields
        try:
            hs, ws = (int(v) for v in fields["semantic"]["shape"][1:3])
            h, w = (int(v) for v in fields["latents"]["shape"][2:4])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{data.root}: index.json lists no semantic and latent field shapes; extract the data again") from None
        rho = ClipGeometry.of(data.producer, data.components).latents_per_token
        return cls((hs, ws), (math.ceil(rho), -(-h // hs), -(-w // ws)), rho)

    def to_dict(self) -> dict:
        return {"grid": list(self.grid), "cell": list(self.cell), "latents_per_token": str(self.latents_per_token)}

    @classmethod
    def from_dict(cls, d: dict) -> "VaeLayout":
        return cls(tuple(int(v) for v in d["grid"]), tuple(int(v) for v in d["cell"]), Fraction(d["latents_per_token"]))

    def tokens(self, latents: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """VAE latents (C, T, h, w) of a clip → its first `n_tokens` tokens (n_tokens, hs, ws, C·r·a·b)."""
        C, T, h, w = latents.shape
        (hs, ws), (r, a, b) = self.grid, self.cell
        # time: sub-frame m of token j = m // r spans [m·ρ/r, (m+1)·ρ/r) latent frames; weights = overlaps
        step = float(self.latents_per_token) / r
        lo = torch.arange(n_tokens * r, dtype=torch.float64)[:, None] * step  # (Ts·r, 1)
        k = torch.arange(T, dtype=torch.float64)[None]  # (1, T)
        weight = (torch.minimum(lo + step, k + 1) - torch.maximum(lo, k)).clamp_min(0)  # (Ts·r, T)
        weight[weight.sum(1) == 0, T - 1] = 1.0  # past the clip's end: its last frame
        weight = (weight / weight.sum(1, keepdim=True)).to(latents.dtype)
        x = torch.einsum("mk,ckhw->cmhw", weight, latents)  # (C, Ts·r, h, w)
        x = torch.nn.functional.adaptive_avg_pool2d(x, (hs * a, ws * b))  # (C, Ts·r, hs·a, ws·b)
        x = x.reshape(C, n_tokens, r, hs, a, ws, b).permute(1, 3, 5, 0, 2, 4, 6)  # (Ts, hs, ws, C, r, a, b)
        return x.reshape(n_tokens, hs, ws, C * r * a * b)


def feature_tokens(sample: dict, features: str, layout: VaeLayout | None = None, n_tokens: int | None = None) -> torch.Tensor:
    """The (T, h, w, d) tokens the compressor sees for one sample: its semantic features, or (with
    `layout` and the sample's `n_tokens` semantic tokens) its VAE latents on the same grid."""
    if features == "semantic":
        return sample["semantic"].float()
    return layout.tokens(sample["latents"].float(), n_tokens)


def sample_tokens(data, i: int, features: str, layout: VaeLayout | None = None) -> torch.Tensor:
    """`feature_tokens` of sample `i` of `data`, loading only the field it needs."""
    if features == "semantic":
        return feature_tokens(data.load(i, ["semantic"]), features)
    return feature_tokens(data.load(i, ["latents"]), features, layout, int(data.records[i]["semantic_tokens_t"]))


def check_vae_layout(recorded: dict | None, data, named: str) -> VaeLayout:
    """The layout `named` (a compressor or latent run) was made with, if `data` has the same one."""
    have = VaeLayout.of_data(data)
    if recorded is None:
        raise MismatchError(f"{named}: compresses VAE latents without a recorded token layout; fit it again with `semgen fit-compressor --features vae`")
    want = VaeLayout.from_dict(recorded)
    if want != have:
        raise MismatchError(f"{named}: VAE tokens laid out as {want.to_dict()}, {data.root} gives {have.to_dict()}; use data extracted at the same sizes and rates")
    return want


@torch.no_grad()
def posterior_stats(compressor, data, features: str, layout: VaeLayout | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (out_dim,) of the posterior means of every token of `data`
    (VAE tokens cut by `layout` for `features="vae"`), streamed sample by sample (float64 sums;
    no copy of the data set in memory)."""
    dev = compressor.stats_mean.device
    n, s1, s2 = 0, 0.0, 0.0
    for i in range(len(data)):
        _, mean, _ = compressor(sample_tokens(data, i, features, layout).to(dev))
        z = mean.reshape(-1, mean.shape[-1]).double()  # (N, C)
        n, s1, s2 = n + z.shape[0], s1 + z.sum(0), s2 + z.square().sum(0)
    m = s1 / n
    return m.float(), (s2 / n - m.square()).clamp_min(0).sqrt().float()

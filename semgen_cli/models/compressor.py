"""The semantic compressor: an MLP from semantic features (d=2048) to a small Gaussian space.

Paper §3.2, "semantic representation compression": a learnable MLP reduces the dimension of the
semantic features and models the compressed space as a Gaussian (it outputs mean and variance;
a KL term regularises it towards N(0, I)); the sampled embedding ``z_sem`` feeds the DiT. Dim 8
is the default, 64 and "none" (raw features) are the paper's ablations (Fig. 4, Fig. 8, Table 3).

``semgen fit-compressor`` fits it as a KL autoencoder (``reconstruct`` is the small decoder used
only for that start); ``train-latent`` fine-tunes the encoder jointly with the DiT, which sees
the normalised posterior means (plus RAE σ-noise), as stage 2 learns them. The per-channel
mean/std of the posterior means are buffers saved with the weights, so the diffusion models see
a normalised space (``normalize`` / ``denormalize``); ``train-latent`` recomputes them whenever
it trains the compressor (docs/compressor.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from semgen_cli.config import from_dict_strict
from semgen_cli.errors import ConfigError


@dataclass
class CompressorConfig:
    """Shape and loss weight of a :class:`Compressor`. Its fields are the compressor's config.json."""

    in_dim: int = 2048
    """Width of the semantic features (2048 for the Qwen2.5-VL-3B vision tower)."""
    dim: int | None = 8
    """Width of the compressed space; None keeps the raw features (the "none" ablation)."""
    hidden: int = 512
    """Hidden width of the encoder and decoder MLPs."""
    kl_weight: float = 1e-3
    """Weight of the KL term towards N(0, I) (used by whoever trains it)."""

    def __post_init__(self) -> None:
        if self.dim == "none":
            self.dim = None
        if self.in_dim < 1 or self.hidden < 1:
            raise ConfigError(f"compressor in_dim and hidden must be positive, got {self.in_dim}, {self.hidden}")
        if self.dim is not None and self.dim < 1:
            raise ConfigError(f"compressor dim must be positive or 'none', got {self.dim}")
        if self.kl_weight < 0:
            raise ConfigError(f"compressor kl_weight must be >= 0, got {self.kl_weight}")

    @property
    def out_dim(self) -> int:
        """Width of what the DiT receives: ``dim``, or ``in_dim`` when dim is none."""
        return self.in_dim if self.dim is None else self.dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CompressorConfig":
        return from_dict_strict(cls, d, "compressor config")


class Compressor(nn.Module):
    """MLP encoder to (mean, logvar), reparameterised sample, small decoder, normalisation stats."""

    def __init__(self, config: CompressorConfig):
        super().__init__()
        self.config = cfg = config
        if cfg.dim is not None:
            self.encoder = nn.Sequential(nn.Linear(cfg.in_dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, 2 * cfg.dim))
            self.decoder = nn.Sequential(nn.Linear(cfg.dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.in_dim))
        self.register_buffer("stats_mean", torch.zeros(cfg.out_dim))
        self.register_buffer("stats_std", torch.ones(cfg.out_dim))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``features`` (..., in_dim) -> ``(z, mean, logvar)``, each (..., out_dim).

        ``z`` is a reparameterised sample in training mode and the mean in eval mode. With
        dim none, ``z = mean = features`` and ``logvar`` is zeros (no KL).
        """
        if self.config.dim is None:
            return features, features, torch.zeros_like(features)
        mean, logvar = self.encoder(features).chunk(2, dim=-1)  # (..., dim) each
        logvar = logvar.clamp(-30.0, 20.0)
        if self.training:
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        else:
            z = mean
        return z, mean, logvar

    @staticmethod
    def kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mean, exp(logvar)) || N(0, I)), summed over channels, averaged over tokens -> scalar."""
        kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float())  # (..., dim)
        return kl.sum(-1).mean()

    def reconstruct(self, z: torch.Tensor) -> torch.Tensor:
        """Decode compressed ``z`` (..., dim) back to features (..., in_dim) (identity for none)."""
        if self.config.dim is None:
            return z
        return self.decoder(z)

    def autoencoder_loss(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """KL-autoencoder objective ``mse(reconstruct(z), features) + kl_weight * kl`` and its parts."""
        z, mean, logvar = self(features)
        rec = F.mse_loss(self.reconstruct(z).float(), features.float())
        kl = self.kl(mean, logvar)
        loss = rec + self.config.kl_weight * kl
        return loss, {"reconstruction": float(rec.detach()), "kl": float(kl.detach())}

    @torch.no_grad()
    def set_stats(self, mean: torch.Tensor, std: torch.Tensor, min_std: float = 1e-6) -> None:
        """Store per-channel statistics (out_dim,) of the compressed space."""
        if mean.shape != self.stats_mean.shape or std.shape != self.stats_std.shape:
            raise ValueError(f"stats must have shape ({self.config.out_dim},), got {tuple(mean.shape)}, {tuple(std.shape)}")
        self.stats_mean.copy_(mean)
        self.stats_std.copy_(std.clamp_min(min_std))

    @staticmethod
    def stats_of(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of ``z`` (..., C) over all other axes -> (C,), (C,)."""
        flat = z.detach().float().reshape(-1, z.shape[-1])  # (N, C)
        return flat.mean(0), flat.std(0, unbiased=False)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.stats_mean.to(z.dtype)) / self.stats_std.to(z.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.stats_std.to(z.dtype) + self.stats_mean.to(z.dtype)

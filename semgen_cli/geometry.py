"""Clip geometry: how seconds of video become frames, latent frames and semantic tokens.

Paper §3.2-3.4: stage 1 generates VAE latents (the VAE compresses time by its temporal stride,
4 for Wan2.1, 8 for LTX-Video, and space by its spatial stride), conditioned on semantic tokens
that the semantic encoder makes of frames sampled at a lower rate (Qwen2.5-VL: 1.6 fps here,
two frames merged per token, its temporal patch). Both sequences meet in stage 1's attention,
where each semantic token sits at the latent time of its frames' centre (its RoPE time).

`ClipGeometry` holds the rates and strides of one data set, as its producer record (`fps`,
`semantic_fps`) and its components (`vae.temporal_stride`, `vae.spatial_stride`,
`semantic.temporal_patch`) name them, and answers every question about lengths; no step does
this arithmetic itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

DEFAULT_TEMPORAL_STRIDE = 4
"""VAE temporal stride of records that do not name one (the Wan2.1-style VAEs data was first extracted with)."""
DEFAULT_SPATIAL_STRIDE = 8
DEFAULT_TEMPORAL_PATCH = 2
"""Semantic temporal patch of records that do not name one (Qwen2.5-VL merges two frames per token)."""


def latent_frames_for(seconds: float, fps: float, stride: int) -> int:
    """Latent frames of a clip: F = round(s·fps) frames → 1 + ceil((F − 1)/stride)."""
    frames = max(1, round(seconds * fps))
    return 1 + math.ceil((frames - 1) / stride)


def semantic_tokens_for(seconds: float, semantic_fps: float, temporal_patch: int) -> int:
    """Semantic tokens along time: ceil(floor(s·fps_sem)/patch), at least 1."""
    frames = max(1, math.floor(seconds * semantic_fps + 1e-6))
    return math.ceil(frames / temporal_patch)


def latents_per_token(fps: float, semantic_fps: float, temporal_patch: int, stride: int) -> Fraction:
    """How many latent frames one semantic token spans (8 fps, 1.6 fps, patch 2, stride 4 → 5/2)."""
    return Fraction(temporal_patch * fps / (semantic_fps * stride)).limit_denominator(1000)


@dataclass(frozen=True)
class ClipGeometry:
    """Rates and strides of one data set (or of the runs trained on it)."""

    fps: float
    """Video frames per second the latents were extracted at."""
    semantic_fps: float
    """Frames per second the semantic encoder read."""
    temporal_stride: int = DEFAULT_TEMPORAL_STRIDE
    """Video frames per latent frame (after the first)."""
    spatial_stride: int = DEFAULT_SPATIAL_STRIDE
    """Pixels per latent row and column."""
    temporal_patch: int = DEFAULT_TEMPORAL_PATCH
    """Semantic frames merged into one semantic token."""

    @classmethod
    def of(cls, producer: dict, components: dict) -> "ClipGeometry":
        """The geometry of a data set's `producer` record and `components` (index.json, or a run's `data`)."""
        vae, sem = components.get("vae") or {}, components.get("semantic") or {}
        return cls(float(producer["fps"]), float(producer["semantic_fps"]),
                   int(vae.get("temporal_stride", DEFAULT_TEMPORAL_STRIDE)), int(vae.get("spatial_stride", DEFAULT_SPATIAL_STRIDE)),
                   int(sem.get("temporal_patch", DEFAULT_TEMPORAL_PATCH)))

    def latent_frames(self, seconds: float, fps: float | None = None) -> int:
        """Latent frames of `seconds` of video at `fps` (default: the data's)."""
        return latent_frames_for(seconds, self.fps if fps is None else fps, self.temporal_stride)

    def semantic_tokens(self, seconds: float) -> int:
        """Semantic tokens along time of `seconds` of video."""
        return semantic_tokens_for(seconds, self.semantic_fps, self.temporal_patch)

    @property
    def latents_per_token(self) -> Fraction:
        """ρ: latent frames one semantic token spans."""
        return latents_per_token(self.fps, self.semantic_fps, self.temporal_patch, self.temporal_stride)

    @property
    def period(self) -> int:
        """The smallest whole number of latent frames that spans a whole number of semantic
        tokens: training windows start at its multiples, so every window sees its semantic
        tokens at the same times."""
        return self.latents_per_token.numerator

    def latent_fps(self, fps: float | None = None) -> float:
        """Latent frames per second of video at `fps` (default: the data's)."""
        return (self.fps if fps is None else fps) / self.temporal_stride

    def semantic_times(self, tokens: int, fps: float | None = None, device=None):
        """Latent times (tokens,) of the first `tokens` semantic tokens of video played at `fps`
        (default: the data's): each at the centre of the frames it merges (RoPE time in stage 1)."""
        from semgen_cli.models.dit import semantic_times_from_fps

        return semantic_times_from_fps(tokens, self.semantic_fps, self.latent_fps(fps), self.temporal_patch, device=device)

    def video_frames(self, latent_frames: int) -> int:
        """Video frames that `latent_frames` latent frames decode to."""
        return self.temporal_stride * (latent_frames - 1) + 1

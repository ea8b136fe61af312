"""How close a decoded toy clip is to the rendered one: PSNR, whole and per latent frame of a
causal VAE (the first frame alone, then chunks of the VAE's temporal stride). The toy VAE's
trainer (examples/toy/train_vae.py) reports these, and so does the ceiling diagnostic
(examples/toy/diagnostics/vae_ceiling.py)."""

from __future__ import annotations

import numpy as np


def latent_frame_spans(frames: int, stride: int = 4) -> list[tuple[int, int]]:
    """Frame ranges [a, b) of each latent frame of a causal VAE with temporal stride `stride`:
    the first frame alone, then chunks of `stride`."""
    return [(0, 1)] + [(a, min(a + stride, frames)) for a in range(1, frames, stride)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 arrays of one shape, in dB (inf when equal)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))

"""Training samples cut from extracted shards, for both stages.

Time alignment (paper §3.3 "in-context conditioning", DESIGN §2): the VAE sees frames at `fps`
and packs them causally — latent 0 is frame 0, latent i ≥ 1 holds frames 4i−3 … 4i — so a
latent's position on the time axis is (frame index)/4. The semantic encoder sees frames at
`semantic_fps` with temporal patch 2, so semantic token j covers semantic frames 2j and 2j+1, and
sits at its centre time τ_j = (2j + 0.5) / semantic_fps seconds, i.e. at latent position
τ_j · fps / 4. `semantic_positions` computes that; the DiT places semantic tokens on the 3D RoPE
time axis at those positions.

Windows (issue 4, `--clip-seconds`): long samples are cut to random windows of `clip_latents`
latent frames; the semantic tokens of the same span are cut with them (a fixed count, so batches
stack), and their positions are taken relative to the window start. Randomness comes from the
per-sample seed the trainer hands in, so a resumed run cuts the same windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.io.shards import Dataset


def semantic_positions(count: int, fps: float, semantic_fps: float, temporal_patch: int = 2) -> torch.Tensor:
    """Latent-time position of each semantic token, shape (count,)."""
    j = torch.arange(count, dtype=torch.float32)
    centre_s = (temporal_patch * j + (temporal_patch - 1) / 2) / semantic_fps  # seconds
    return centre_s * fps / 4.0


def latent_frames_for(seconds: float, fps: float, temporal_stride: int = 4) -> int:
    """Latent frames a clip of `seconds` takes: frames = seconds·fps, latents = 1 + ceil((F−1)/4)."""
    frames = max(1, round(seconds * fps))
    return 1 + math.ceil((frames - 1) / temporal_stride)


def semantic_tokens_for(seconds: float, semantic_fps: float, temporal_patch: int = 2) -> int:
    """Semantic tokens along time for `seconds` of video: ceil(floor(s·fps)/2), at least 1."""
    frames = max(1, math.floor(seconds * semantic_fps + 1e-6))
    return math.ceil(frames / temporal_patch)


@dataclass
class Window:
    """How samples are cut: `latents` latent frames and `semantic` semantic tokens along time."""

    latents: int
    semantic: int


class ClipDataset(torch.utils.data.Dataset):
    """Items are dicts of tensors for one window of one sample.

    Indexing takes `(index, seed)` (the trainer's per-sample seed) or a plain index (seed 0).
    Keys: latents (C, T, h, w), semantic (Ts, hs, ws, d), semantic_pos (Ts,), text (L, D).
    `window=None` keeps whole samples (stage 2 trains on whole clips; `collate` pads them).
    """

    def __init__(self, data: Dataset, window: Window | None, fields: tuple[str, ...] = ("latents", "semantic", "text")) -> None:
        self.data = data
        self.window = window
        self.fields = fields
        p = data.producer
        self.fps, self.semantic_fps = float(p["fps"]), float(p["semantic_fps"])
        records = data.records
        if window is None:
            self.indices = list(range(len(records)))
        else:
            self.indices = [i for i, r in enumerate(records) if r["latent_frames"] >= window.latents and r["semantic_tokens_t"] >= window.semantic]
            if not self.indices:
                longest = max((r["duration"] for r in records), default=0.0)
                raise ConfigError(f"{data.root}: no sample is long enough for the training window (longest is {longest:.2f} s); lower --clip-seconds")
        self.skipped = len(records) - len(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item) -> dict:
        index, seed = item if isinstance(item, tuple) else (item, 0)
        i = self.indices[index]
        tensors = self.data.load(i, list(self.fields))
        out: dict[str, torch.Tensor] = {k: v.float() for k, v in tensors.items()}
        ts = out["semantic"].shape[0] if "semantic" in out else 0
        pos = semantic_positions(ts, self.fps, self.semantic_fps)
        if self.window is not None:
            g = torch.Generator().manual_seed(int(seed))
            total = out["latents"].shape[1]
            k0 = int(torch.randint(0, total - self.window.latents + 1, (1,), generator=g))
            out["latents"] = out["latents"][:, k0 : k0 + self.window.latents]
            if "semantic" in out:
                # semantic token nearest the window start, then a fixed count
                j0 = int(round(float(k0 * 4 / self.fps * self.semantic_fps / 2)))
                j0 = max(0, min(j0, ts - self.window.semantic))
                out["semantic"] = out["semantic"][j0 : j0 + self.window.semantic]
                pos = pos[j0 : j0 + self.window.semantic] - k0
        if "semantic" in out:
            out["semantic_pos"] = pos
        return out


def collate(items: list[dict]) -> dict:
    """Stack a batch; text (and whole-clip semantics) are padded with a boolean mask."""
    batch: dict[str, torch.Tensor] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key == "text":
            batch["text"], batch["text_mask"] = _pad([v for v in values], axis=0)
        elif key in ("semantic", "semantic_pos") and len({v.shape[0] for v in values}) > 1:
            batch[key], batch[f"{key}_mask"] = _pad(values, axis=0)
        elif key == "latents" and len({v.shape[1] for v in values}) > 1:
            raise InputError("latent windows of different lengths in one batch; set a training window")
        else:
            batch[key] = torch.stack(values)
    if "semantic" in batch and "semantic_mask" not in batch:
        batch["semantic_mask"] = torch.ones(batch["semantic"].shape[:2], dtype=torch.bool)
    return batch


def _pad(values: list[torch.Tensor], axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(v.shape[axis] for v in values)
    out = values[0].new_zeros((len(values), length, *values[0].shape[1:]))
    mask = torch.zeros(len(values), length, dtype=torch.bool)
    for i, v in enumerate(values):
        out[i, : v.shape[0]] = v
        mask[i, : v.shape[0]] = True
    return out, mask

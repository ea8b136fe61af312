"""The swin window of stage 1 and the training windows it samples (paper §3.4).

`train-latent`'s shifted-window attention gives every window of `window` latent frames, plain and
shifted by half a window on odd layers, only the semantic tokens inside it; a window with no
semantic frame renders from the text alone. The rule (`smallest_window`) is the smallest window in
which every window of every video holds a semantic frame at the data's rates, worked out from the
periods of the two frame grids (`window_gap`). :class:`LatentWindows` cuts the training items:
windows of latent frames starting on whole alignment periods, with the semantic tokens they span.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import TYPE_CHECKING

import torch

from semgen_cli.errors import ConfigError
from semgen_cli.geometry import ClipGeometry
from semgen_cli.io.shards import Dataset

if TYPE_CHECKING:
    from semgen_cli.steps.train_latent import TrainLatentConfig


def empty_windows(frames: int, geometry: ClipGeometry, window: int) -> int:
    """How many attention windows (plain and shifted, as `window_plan` cuts them) of a video of
    `frames` frames at the data's fps hold no semantic frame (`geometry`: the data's rates)."""
    from semgen_cli.models.attention import window_ids

    seconds = frames / geometry.fps
    T = geometry.latent_frames(seconds)
    slots = geometry.semantic_times(geometry.semantic_tokens(seconds)).round().clamp(0, T - 1).long()
    empty = 0
    for shift in (0, window // 2 if T > window else 0):
        every = window_ids(torch.arange(T), T, window, shift).unique()
        empty += int((~torch.isin(every, window_ids(slots, T, window, shift))).sum())
    return empty


@functools.lru_cache(maxsize=256)  # a pure function of hashable rates; every train-latent asks it again
def window_gap(geometry: ClipGeometry, window: int, from_seconds: float) -> tuple[float, int] | None:
    """The shortest video, at least `from_seconds` long, with windows that hold no semantic frame:
    (its seconds, how many), or None when every length has a semantic frame in every window.

    Semantic frames repeat every `latents_per_token` latent frames (period p/q: q frames every p)
    and windows every `window`, so the pattern at the end of a video repeats every lcm(p, window)
    latent frames (a temporal stride of video frames each); two such periods past the shortest
    length cover them all."""
    first = max(1, round(from_seconds * geometry.fps))
    for frames in range(first, first + geometry.temporal_stride * (2 * math.lcm(geometry.period, window) + 2 * window) + 1):
        n = empty_windows(frames, geometry, window)
        if n:
            return frames / geometry.fps, n
    return None


def smallest_window(geometry: ClipGeometry, from_seconds: float, largest: int = 64) -> int:
    """The smallest swin window (latent frames) with a semantic frame in every window, plain and
    shifted, of every video at least `from_seconds` long at these rates (`window_gap`)."""
    for window in range(2, largest + 1):
        if window_gap(geometry, window, from_seconds) is None:
            return window
    raise ConfigError(f"no --window up to {largest} latent frames gives every window a semantic frame at {geometry.fps:g} fps and "
                      f"{geometry.semantic_fps:g} semantic fps; extract with a higher --semantic-fps")


def resolve_window(cfg: "TrainLatentConfig", geometry: ClipGeometry, seconds: float, recorded: int | None) -> int:
    """The swin window to train with: --window, else the recorded one (--init RUN, --resume),
    else `smallest_window`. A --window that leaves windows without a semantic frame is refused,
    unless it is the window the DiT was already trained with (`recorded`)."""
    if cfg.attention != "swin" or cfg.condition != "semantic":  # vae tokens sit on every latent frame
        return cfg.window or recorded or 4
    if cfg.window is None:
        return recorded or smallest_window(geometry, seconds)
    if cfg.window != recorded:
        gap = window_gap(geometry, cfg.window, seconds)
        if gap is not None:
            raise ConfigError(f"--window {cfg.window}: {gap[1]} windows of a {gap[0]:g} s video hold no semantic frame at {geometry.fps:g} fps "
                              f"and {geometry.semantic_fps:g} semantic fps; the smallest window that works is "
                              f"{smallest_window(geometry, seconds)} (leave --window out to use it)")
    return cfg.window


class LatentWindows(torch.utils.data.Dataset):
    """Training items: a window of `latents` latent frames and the semantic tokens of its span
    (with `vae_layout`, the clip's VAE latents on the semantic grid stand in for its semantic
    features: the compressed-VAE condition).

    Window starts are multiples of the alignment period (the smallest whole number of latent
    frames that spans a whole number of semantic tokens), so every item of a batch has the same
    semantic positions relative to its window, which swin attention needs.
    """

    takes_seed = True

    def __init__(self, data: Dataset, latents: int, tokens: int, fields: tuple[str, ...], vae_layout=None) -> None:
        geometry = ClipGeometry.of(data.producer, data.components)
        self.data, self.latents, self.tokens, self.fields, self.vae_layout = data, latents, tokens, fields, vae_layout
        self.ratio = geometry.latents_per_token
        self.period = geometry.period  # latent frames spanning ratio.denominator whole tokens
        self.index = [i for i, r in enumerate(data.records) if r["latent_frames"] >= latents and r["semantic_tokens_t"] >= tokens]
        if not self.index:
            longest = max((r["duration"] for r in data.records), default=0.0)
            raise ConfigError(f"{data.root}: no sample is as long as the training window (longest {longest:.2f} s); lower --clip-seconds")

    def __len__(self) -> int:
        return len(self.index)

    def sample_id(self, key) -> str:
        """The id of the sample behind a training key (named when its data is not finite)."""
        return self.data.records[self.index[key.index]]["id"]

    def __getitem__(self, key) -> dict:
        rec = self.data.records[self.index[key.index]]
        x = self.data.load(self.index[key.index], list(self.fields))
        T, Ts = rec["latent_frames"], rec["semantic_tokens_t"]
        if self.vae_layout is not None:  # tokens of the whole clip, cut below like semantic features
            x["semantic"] = self.vae_layout.tokens(x["latents"].float(), Ts)
        # window starts k0 = m·period with k0 + latents ≤ T and its tokens j0 + tokens ≤ Ts
        starts = [m for m in range(0, T - self.latents + 1, self.period) if int(Fraction(m) / self.ratio) + self.tokens <= Ts]
        g = torch.Generator().manual_seed(int(key.seed))
        k0 = starts[int(torch.randint(0, len(starts), (1,), generator=g))] if starts else 0
        out = {"latents": x["latents"][:, k0 : k0 + self.latents].float()}
        if "semantic" in x:
            j0 = int(Fraction(k0) / self.ratio)
            out["semantic"] = x["semantic"][j0 : j0 + self.tokens].float()
        if "text" in x:
            out["text"] = x["text"].float()
        return out

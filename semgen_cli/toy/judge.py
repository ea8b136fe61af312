"""A pixel-exact judge for toy-world videos: does a (generated) video show what its caption says?

Per frame it estimates the four attributes of the caption grammar (DESIGN §6):
1. background: every border pixel is given the nearest background colour (if within
   `colour_threshold`); the most common one wins;
2. object colour: pixels farther than `object_threshold` from the measured background are given
   the nearest object colour (if within `colour_threshold`); the most common one wins;
3. shape: a soft mask (how far each pixel lies from the measured background towards the
   measured object colour, 0–1); the largest 8-connected component of its core (> 0.5) is found on
   the torus, so an object straddling an edge is followed across it and unwrapped; in a window
   around it the soft mask is compared by soft IoU with a square, a disc and an up-pointing
   triangle of the same area and centroid, drawn by the renderer itself; if the triangle does not
   win, the fourth-moment ratio E[x²y²] / (E[x²] E[y²]) (1 for a square, 2/3 for a disc) decides,
   as it survives the 2×2 chroma blocks of yuv420p that round a square's corners;
4. motion: the soft mask's centroid, wrapped into the frame; per step between frames the
   displacement is the circular difference (so wrap-around reads as steady motion), averaged over
   the steps within `motion_window` of the frame; below `still_threshold` px/frame it is `still`,
   otherwise the direction of the larger axis.

Decoded video carries codec noise, so colours are matched to the nearest palette entry with a
distance threshold rather than exactly. Per video, each attribute gets its accuracy over frames,
the majority prediction and whether it is right, and its drift: accuracy over the first segment
minus accuracy over the last, where a segment is `max(1, floor(0.15 · F))` frames (FramePack's
Δdrift takes the absolute value of this difference; the sign here says which way it went,
positive meaning worse at the end).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.toy.world import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, parse_caption, shape_mask

ATTRIBUTES: tuple[str, ...] = ("background", "colour", "shape", "motion")
SEGMENT_FRACTION = 0.15
"""First and last segments for drift: `max(1, floor(0.15 · F))` frames each."""

_BG_NAMES = list(BACKGROUNDS)
_BG_RGB = np.array([BACKGROUNDS[n] for n in _BG_NAMES], dtype=np.float32)  # (4, 3)
_OBJ_NAMES = list(COLOURS)
_OBJ_RGB = np.array([COLOURS[n] for n in _OBJ_NAMES], dtype=np.float32)  # (8, 3)
_ALLOWED = {"background": BACKGROUNDS, "colour": COLOURS, "shape": SHAPES, "motion": MOTIONS}


@dataclass(frozen=True)
class JudgeConfig:
    """Thresholds of the judge. The defaults sit well inside the palette's gaps (the closest two
    object colours, orange and yellow, are 76 apart; every object colour is at least 118 from every
    background) and well above H.264 noise on flat colours (a few levels)."""

    colour_threshold: float = 60.0
    """Largest RGB distance at which a pixel still counts as a palette colour."""
    object_threshold: float = 40.0
    """Smallest RGB distance from the background at which a pixel can be the object."""
    min_pixels: int = 6
    """Fewer object pixels than this: no object in the frame (no colour, shape or position)."""
    still_threshold: float = 0.5
    """Below this many px/frame along both axes the object is standing still."""
    motion_window: int = 1
    """Steps on each side of a frame averaged for its velocity (1: the steps into and out of it)."""

    def __post_init__(self) -> None:
        if self.colour_threshold <= 0 or self.object_threshold <= 0:
            raise ConfigError("judge thresholds must be positive")
        if self.min_pixels < 1 or self.motion_window < 1 or self.still_threshold < 0:
            raise ConfigError("judge min_pixels and motion_window must be at least 1, still_threshold at least 0")


@dataclass
class FrameAnalysis:
    """Per-frame predictions of a video (None where a frame shows nothing recognisable)."""

    background: list[str | None] = field(default_factory=list)
    colour: list[str | None] = field(default_factory=list)
    shape: list[str | None] = field(default_factory=list)
    centroid: list[tuple[float, float]] = field(default_factory=list)
    """(x, y) of the object's centre in pixels, wrapped into the frame; NaN when no object."""
    width: int = 0
    height: int = 0

    def extend(self, other: "FrameAnalysis") -> None:
        for name in ("background", "colour", "shape", "centroid"):
            getattr(self, name).extend(getattr(other, name))
        self.width, self.height = other.width, other.height

    def __len__(self) -> int:
        return len(self.background)


@dataclass
class JudgeResult:
    """The judge's scores for one video. Dicts are keyed by the attributes judged."""

    expected: dict[str, str]
    frames: int
    segment: int
    """Frames in each of the first and last segments used for drift."""
    per_frame: dict[str, list[str | None]]
    accuracy: dict[str, float]
    """Fraction of frames whose prediction equals the expected value."""
    majority: dict[str, str | None]
    """Most common per-frame prediction."""
    correct: dict[str, bool]
    """Per-video verdict: the majority prediction is the expected value."""
    first: dict[str, float]
    last: dict[str, float]
    drift: dict[str, float]
    """first − last accuracy (positive: worse at the end)."""

    @property
    def passed(self) -> bool:
        return all(self.correct.values())

    def to_dict(self, per_frame: bool = False) -> dict:
        d = {
            "expected": self.expected,
            "frames": self.frames,
            "segment": self.segment,
            "accuracy": self.accuracy,
            "majority": self.majority,
            "correct": self.correct,
            "first": self.first,
            "last": self.last,
            "drift": self.drift,
            "passed": self.passed,
        }
        if per_frame:
            d["per_frame"] = self.per_frame
        return d


def segment_length(num_frames: int) -> int:
    """Frames in the first (and the last) segment: `max(1, floor(0.15 · F))`."""
    return max(1, int(math.floor(SEGMENT_FRACTION * num_frames + 1e-9)))


# 1. Per-frame appearance ------------------------------------------------------------------------


def _nearest(pixels: np.ndarray, palette: np.ndarray, threshold: float) -> np.ndarray:
    """Index of the nearest palette colour for each pixel `(..., 3)`, -1 beyond `threshold`."""
    d = np.linalg.norm(pixels[..., None, :] - palette, axis=-1)  # (..., P)
    idx = d.argmin(-1)
    return np.where(d.min(-1) <= threshold, idx, -1)


def _mode(idx: np.ndarray) -> int:
    idx = idx[idx >= 0]
    return int(np.bincount(idx).argmax()) if idx.size else -1


def _border(frame: np.ndarray) -> np.ndarray:
    return np.concatenate([frame[0], frame[-1], frame[1:-1, 0], frame[1:-1, -1]])  # (2W + 2H - 4, 3)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Unwrapped `(y, x)` coordinates `(n, 2)` of the largest 8-connected component of `mask` on
    the torus: walking across an edge continues on the other side with coordinates beyond the
    frame, so an object that straddles an edge comes out contiguous."""
    h, w = mask.shape
    remaining = set(zip(*(a.tolist() for a in np.nonzero(mask)), strict=True))
    best: list[tuple[int, int]] = []
    while remaining:
        start = remaining.pop()
        comp, stack = [start], [start]
        while stack:
            uy, ux = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    key = ((uy + dy) % h, (ux + dx) % w)
                    if key in remaining:
                        remaining.remove(key)
                        comp.append((uy + dy, ux + dx))
                        stack.append((uy + dy, ux + dx))
        if len(comp) > len(best):
            best = comp
    return np.array(best, dtype=np.int64).reshape(-1, 2)


ALPHA_FLOOR = 0.25
"""Soft-mask values below this are background noise, set to 0 before shapes and centroids."""
SQUARE_MOMENT_RATIO = 0.83
"""Between a disc's E[x²y²] / (E[x²] E[y²]) = 2/3 and a square's 1."""

_SUB = 4
_SUB_OFFSETS = (np.arange(_SUB) + 0.5) / _SUB - 0.5  # (S,) sub-pixel sample offsets


def _coverage(shape: str, dx: np.ndarray, dy: np.ndarray, size: float) -> np.ndarray:
    """Fraction of each pixel the shape covers, pixel centres at offsets `dx` `(n,)`, `dy` `(n,)`
    from its centre, sampled on a 4×4 sub-pixel grid with the renderer's own `shape_mask`."""
    sx = dx[:, None, None] + _SUB_OFFSETS[None, None, :]  # (n, 1, S)
    sy = dy[:, None, None] + _SUB_OFFSETS[None, :, None]  # (n, S, 1)
    return shape_mask(shape, sx, sy, size).mean(axis=(1, 2))  # (n,)


def classify_shape(dx: np.ndarray, dy: np.ndarray, alpha: np.ndarray) -> str | None:
    """Shape whose template best matches the soft object mask `alpha` `(n,)` at pixel offsets
    `(dx, dy)` from the object's centroid: a triangle if its template wins by soft IoU (sum of
    minima over sum of maxima), else a square or a circle by a fourth-moment ratio.

    Each template has the area of the mask and its centroid on the mask's centroid (a triangle's
    centroid lies s/6 below its box centre). Soft coverage on both sides makes this robust to the
    2×2 chroma blocks of yuv420p, which carry most of an object's edge when its luma is close to
    the background's (purple or blue on gray).
    """
    area = float(alpha.sum())
    if area <= 0:
        return None
    sizes = {"square": math.sqrt(area), "circle": math.sqrt(4 * area / math.pi), "triangle": math.sqrt(2 * area)}
    iou = {}
    for name, size in sizes.items():
        shift = size / 6 if name == "triangle" else 0.0
        tpl = _coverage(name, dx, dy + shift, size)
        iou[name] = float(np.minimum(alpha, tpl).sum() / max(1e-9, np.maximum(alpha, tpl).sum()))
    if max(iou, key=iou.get) == "triangle":
        return "triangle"
    # Square or circle: blur rounds a square's corners, which IoU feels; the moment ratio
    # E[x²y²] / (E[x²] E[y²]) hardly moves under blur: 1 for a square (x and y independent),
    # 2/3 for a disc.
    exx, eyy, exy = (alpha @ (dx * dx)) / area, (alpha @ (dy * dy)) / area, (alpha @ (dx * dx * dy * dy)) / area
    return "square" if exy / max(1e-9, exx * eyy) > SQUARE_MOMENT_RATIO else "circle"


def analyze(frames: np.ndarray, config: JudgeConfig | None = None) -> FrameAnalysis:
    """Per-frame background, colour, shape and centroid of `(F, H, W, 3)` uint8 frames."""
    cfg = config or JudgeConfig()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] < 3 or frames.shape[2] < 3:
        raise InputError(f"judge expects frames (F, H, W, 3), got shape {frames.shape}")
    out = FrameAnalysis(width=frames.shape[2], height=frames.shape[1])
    h, w = frames.shape[1:3]
    for frame in frames.astype(np.float32):  # (H, W, 3)
        # 1. Background: the most common palette background on the border.
        border = _border(frame)
        bg = _mode(_nearest(border, _BG_RGB, cfg.colour_threshold))
        out.background.append(_BG_NAMES[bg] if bg >= 0 else None)
        bg_rgb = border[_nearest(border, _BG_RGB, cfg.colour_threshold) == bg].mean(0) if bg >= 0 else np.median(border, 0)

        # 2. Object colour: the most common palette colour among pixels away from the background.
        d_bg = np.linalg.norm(frame - bg_rgb, axis=-1)  # (H, W)
        cand = frame[d_bg > cfg.object_threshold]  # (n, 3)
        if len(cand) < cfg.min_pixels:
            out.colour.append(None), out.shape.append(None), out.centroid.append((math.nan, math.nan))
            continue
        cand_idx = _nearest(cand, _OBJ_RGB, cfg.colour_threshold)
        obj = _mode(cand_idx)
        out.colour.append(_OBJ_NAMES[obj] if obj >= 0 else None)
        obj_rgb = cand[cand_idx == obj].mean(0) if obj >= 0 else cand.mean(0)

        # 3. Shape: a soft mask (where each pixel lies between background and object colour), the
        # largest component of its core unwrapped on the torus, then templates in a window around it.
        axis = obj_rgb - bg_rgb  # (3,)
        alpha = np.clip((frame - bg_rgb) @ axis / max(1e-6, float(axis @ axis)), 0.0, 1.0)  # (H, W)
        coords = _largest_component(alpha > 0.5)  # (n, 2) unwrapped (y, x)
        if len(coords) < cfg.min_pixels:
            out.shape.append(None), out.centroid.append((math.nan, math.nan))
            continue
        cy, cx = coords.mean(0) + 0.5
        reach = 0.75 * math.sqrt(2 * len(coords)) + 2.5  # covers a triangle's apex, 2/3 s above its centroid
        dx = (np.arange(w) + 0.5 - cx + w / 2) % w - w / 2  # (W,) circular offsets
        dy = (np.arange(h) + 0.5 - cy + h / 2) % h - h / 2  # (H,)
        win = (np.abs(dy)[:, None] <= reach) & (np.abs(dx)[None, :] <= reach)  # (H, W)
        wx, wy = np.broadcast_to(dx[None, :], (h, w))[win], np.broadcast_to(dy[:, None], (h, w))[win]
        wa = alpha[win]  # (n,)
        wa = np.where(wa < ALPHA_FLOOR, 0.0, wa)  # codec noise on the background weighs heavily in far moments
        mx, my = (wa @ wx) / wa.sum(), (wa @ wy) / wa.sum()  # refined centroid offset
        out.shape.append(classify_shape(wx - mx, wy - my, wa))
        out.centroid.append((float((cx + mx) % w), float((cy + my) % h)))
    return out


# 2. Motion ----------------------------------------------------------------------------------------


def motion_from_centroids(
    centroids: Sequence[tuple[float, float]], width: int, height: int, config: JudgeConfig | None = None
) -> list[str | None]:
    """Per-frame motion from `(x, y)` centroids, steps taken as circular differences."""
    cfg = config or JudgeConfig()
    c = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)  # (F, 2)
    n = len(c)
    if n < 2:
        return [None] * n
    size = np.array([width, height], dtype=np.float64)
    steps = (np.diff(c, axis=0) + size / 2) % size - size / 2  # (F-1, 2), NaN where an end is missing
    out: list[str | None] = []
    for t in range(n):
        lo, hi = max(0, t - cfg.motion_window), min(n - 1, t + cfg.motion_window)  # steps lo..hi-1
        window = steps[lo:hi]
        window = window[~np.isnan(window).any(-1)]
        if not len(window):
            out.append(None)
            continue
        vx, vy = window.mean(0)
        if max(abs(vx), abs(vy)) < cfg.still_threshold:
            out.append("still")
        elif abs(vx) >= abs(vy):
            out.append("right" if vx > 0 else "left")
        else:
            out.append("down" if vy > 0 else "up")
    return out


# 3. Scores ----------------------------------------------------------------------------------------


def _expected(expected: dict | str) -> dict[str, str]:
    if isinstance(expected, str):
        return parse_caption(expected)
    unknown = set(expected) - set(ATTRIBUTES)
    if unknown:
        raise ConfigError(f"judge: unknown attribute(s) {', '.join(sorted(unknown))}; use {', '.join(ATTRIBUTES)}")
    for key, value in expected.items():
        if value not in _ALLOWED[key]:
            raise ConfigError(f"judge: unknown {key} '{value}', use one of {', '.join(_ALLOWED[key])}")
    return {k: expected[k] for k in ATTRIBUTES if k in expected}


def score(analysis: FrameAnalysis, expected: dict | str, config: JudgeConfig | None = None) -> JudgeResult:
    """Turn per-frame predictions into accuracies, verdicts and drift against `expected`."""
    exp = _expected(expected)
    n = len(analysis)
    if n == 0:
        raise InputError("judge: the video has no frames")
    seg = segment_length(n)
    per_frame = {
        "background": analysis.background,
        "colour": analysis.colour,
        "shape": analysis.shape,
        "motion": motion_from_centroids(analysis.centroid, analysis.width, analysis.height, config),
    }
    acc, majority, correct, first, last, drift = {}, {}, {}, {}, {}, {}
    for key, value in exp.items():
        hits = np.array([p == value for p in per_frame[key]], dtype=np.float64)  # (F,)
        acc[key] = float(hits.mean())
        majority[key] = Counter(per_frame[key]).most_common(1)[0][0]
        correct[key] = majority[key] == value
        first[key], last[key] = float(hits[:seg].mean()), float(hits[-seg:].mean())
        drift[key] = first[key] - last[key]
    return JudgeResult(exp, n, seg, {k: per_frame[k] for k in exp}, acc, majority, correct, first, last, drift)


def judge(frames: np.ndarray, expected: dict | str, config: JudgeConfig | None = None) -> JudgeResult:
    """Judge `(F, H, W, 3)` uint8 frames against `expected` attributes (a dict with any of
    background/colour/shape/motion, or a caption in the toy grammar)."""
    exp = _expected(expected)  # fail on a bad caption before any work
    return score(analyze(frames, config), exp, config)


def judge_video(
    path: str | os.PathLike, caption: str | dict, fps: float | None = None, config: JudgeConfig | None = None, chunk: int = 256
) -> JudgeResult:
    """Decode the video at `path` (at `fps`, native if None) chunk by chunk and judge it."""
    from semgen_cli.io.video import iter_video

    exp = _expected(caption)
    analysis = FrameAnalysis()
    for frames in iter_video(path, fps=fps, chunk=chunk):
        analysis.extend(analyze(frames, config))
    return score(analysis, exp, config)

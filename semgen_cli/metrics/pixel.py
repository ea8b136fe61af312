"""Weight-free drift metrics on decoded RGB pixels (uint8, as the reader returns them).

Each metric keeps one small number (or a 512-bin histogram) per frame or per frame pair, so a
60 s video costs a few kB of state; the frames themselves are streamed and dropped.

- brightness: mean Rec.601 luma Y = 0.299 R + 0.587 G + 0.114 B over all pixels, divided by 255
  (0–1 scale), per frame; a segment scores the mean over its frames.
- sharpness: variance of the 4-neighbour Laplacian of luma (0–255 units, so units²), borders
  reflected without repeating the edge pixel (OpenCV's default BORDER_REFLECT_101, so it equals
  `cv2.Laplacian(Y, cv2.CV_64F).var()` on float luma); per-frame, mean over the segment.
- colourfulness: Hasler & Süsstrunk (2003), rg = R − G, yb = (R + G)/2 − B,
  M = sqrt(σ_rg² + σ_yb²) + 0.3 · sqrt(μ_rg² + μ_yb²) on 0–255 RGB; per-frame, mean over the segment.
- temporal_flickering: VBench's formula (reference §3) on the segment as a clip:
  (255 − mean_i mean|f_i − f_{i+1}|)/255 over the consecutive pairs inside the segment.
- motion_smoothness_linear: VBench's motion-smoothness procedure (reference §4) with AMT-S
  replaced by the linear midpoint: within the segment keep frames a, a+2, a+4, …, predict each
  odd frame as floor((f_{k−1} + f_{k+1})/2) (VBench truncates its uint8 prediction too), score
  (255 − mean |pred − f_k|)/255. NOT VBench's number: a linear blend is a much weaker
  interpolator than AMT, so scores are lower on real motion.
- colour_histogram_distance: joint RGB histogram with 8 bins per channel (512 bins, top 3 bits of
  each channel), normalised per frame and averaged over the segment's frames; the distance
  between the two segments' histograms is their total variation ½ Σ |p − q| ∈ [0, 1].
"""

from __future__ import annotations

import numpy as np

from semgen_cli.metrics import Metric

LUMA = np.array([0.299, 0.587, 0.114])  # Rec.601, the weights of OpenCV's RGB2GRAY
HIST_BITS = 3  # bits kept per channel → 8 bins each, 512 joint bins


def luma(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (H, W) float32 Rec.601 luma on 0–255 (not rounded)."""
    f = frame.astype(np.float32)
    return f[..., 0] * np.float32(LUMA[0]) + f[..., 1] * np.float32(LUMA[1]) + f[..., 2] * np.float32(LUMA[2])


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian [[0,1,0],[1,-4,1],[0,1,0]], reflect-101 borders."""
    p = np.pad(gray, 1, mode="reflect")  # numpy "reflect" = OpenCV BORDER_REFLECT_101
    lap = p[:-2, 1:-1] + p[2:, 1:-1]  # in place from here: 4× faster than one expression at 480p
    lap += p[1:-1, :-2]
    lap += p[1:-1, 2:]
    lap -= 4.0 * gray
    return float(lap.var(dtype=np.float64))


def colourfulness(frame: np.ndarray) -> float:
    """Hasler–Süsstrunk colourfulness of one (H, W, 3) uint8 frame, 0–255 units."""
    r, g, b = (frame[..., c].astype(np.int16) for c in range(3))
    rg = (r - g).ravel().astype(np.float64)
    yb = (r + g - 2 * b).ravel().astype(np.float64) * 0.5  # exact: halves of integers
    n = rg.size
    mean_rg, mean_yb = rg.sum() / n, yb.sum() / n
    var_rg = max(float(rg @ rg) / n - mean_rg**2, 0.0)  # sums of integer squares: exact in float64
    var_yb = max(float(yb @ yb) / n - mean_yb**2, 0.0)
    return float(np.sqrt(var_rg + var_yb) + 0.3 * np.hypot(mean_rg, mean_yb))


def colour_histogram(frame: np.ndarray) -> np.ndarray:
    """(512,) normalised joint RGB histogram of one (H, W, 3) uint8 frame."""
    shift = 8 - HIST_BITS
    q = frame >> shift  # (H, W, 3) values 0..7
    idx = (q[..., 0].astype(np.int32) << (2 * HIST_BITS)) | (q[..., 1].astype(np.int32) << HIST_BITS) | q[..., 2]
    counts = np.bincount(idx.ravel(), minlength=1 << (3 * HIST_BITS))
    return counts / idx.size


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """mean |a − b| over all pixels and channels of two uint8 frames, exact."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).sum(dtype=np.int64) / a.size)


class _PerFrame(Metric):
    """A metric whose value is one number per frame; a segment scores their mean."""

    def begin(self, num_frames: int, wanted: np.ndarray | None = None) -> None:
        self.values = np.full(num_frames, np.nan)
        self.seen = 0

    def update(self, frames: np.ndarray, start: int) -> None:
        assert start == self.seen, "frames must arrive in order"
        for k, frame in enumerate(frames):
            self.values[start + k] = self.frame_value(frame)
        self.seen += len(frames)

    def frame_value(self, frame: np.ndarray) -> float:
        raise NotImplementedError

    def score(self, a: int, b: int) -> float:
        return float(self.values[a:b].mean())


class Brightness(_PerFrame):
    name = "brightness"
    definition = "mean Rec.601 luma (0.299 R + 0.587 G + 0.114 B) over all pixels / 255"
    scale = "0–1 (0 black, 1 white); multiply by 255 for 8-bit levels"
    unit_interval = True
    aggregation = "per frame, mean over the segment's frames"

    def frame_value(self, frame: np.ndarray) -> float:
        flat = frame.reshape(-1, 3)  # (H·W, 3); per-channel integer sums are exact and fast
        sums = np.array([flat[:, c].sum(dtype=np.int64) for c in range(3)], dtype=np.float64)
        return float(sums @ LUMA / len(flat) / 255.0)


class Sharpness(_PerFrame):
    name = "sharpness"
    definition = "variance of the 4-neighbour Laplacian of Rec.601 luma (float, 0–255), reflect-101 borders"
    scale = "luma levels² (0 for a flat frame; no upper bound)"
    aggregation = "per frame, mean over the segment's frames"
    higher_is_better = True

    def frame_value(self, frame: np.ndarray) -> float:
        return laplacian_variance(luma(frame))


class Colourfulness(_PerFrame):
    name = "colourfulness"
    definition = "Hasler–Süsstrunk: sqrt(σ_rg² + σ_yb²) + 0.3·sqrt(μ_rg² + μ_yb²), rg = R−G, yb = (R+G)/2 − B"
    scale = "0–255 RGB units (≈0 grey, 33 moderately, 59 quite, 109 extremely colourful)"
    aggregation = "per frame, mean over the segment's frames"

    def frame_value(self, frame: np.ndarray) -> float:
        return colourfulness(frame)


class _Sequential(Metric):
    """A metric on runs of consecutive frames: keeps the last `context` frames between chunks."""

    context = 1

    def begin(self, num_frames: int, wanted: np.ndarray | None = None) -> None:
        self.values = np.full(num_frames, np.nan)  # indexed by the run's first frame
        self.tail: list[np.ndarray] = []
        self.seen = 0

    def update(self, frames: np.ndarray, start: int) -> None:
        assert start == self.seen, "frames must arrive in order"
        run = self.tail + list(frames)
        first = start - len(self.tail)  # global index of run[0]
        for k in range(len(run) - self.context):
            self.values[first + k] = self.run_value(run[k : k + self.context + 1])
        self.tail = run[-self.context :] if self.context else []
        self.seen += len(frames)

    def run_value(self, frames: list[np.ndarray]) -> float:
        raise NotImplementedError


class TemporalFlickering(_Sequential):
    name = "temporal_flickering"
    definition = "VBench temporal_flickering: (255 − mean over consecutive pairs of mean|f_i − f_{i+1}|) / 255"
    scale = "0–1 (1 = consecutive frames identical)"
    unit_interval = True
    aggregation = "per consecutive pair inside the segment (n − 1 pairs), mean MAE, then (255 − MAE)/255"
    higher_is_better = True
    min_frames = 2
    context = 1

    def run_value(self, frames: list[np.ndarray]) -> float:
        return mean_abs_diff(frames[0], frames[1])

    def score(self, a: int, b: int) -> float:
        mae = self.values[a : b - 1].mean()  # pairs (i, i+1) with a ≤ i, i+1 < b
        return float((255.0 - mae) / 255.0)


class MotionSmoothnessLinear(_Sequential):
    name = "motion_smoothness_linear"
    definition = (
        "VBench motion_smoothness with AMT-S replaced by the linear midpoint: frames a, a+2, … of the segment "
        "predict each odd frame as floor((f_{k-1} + f_{k+1})/2); (255 − mean|pred − f_k|)/255. Not VBench's AMT score."
    )
    scale = "0–1 (1 = every odd frame is exactly the mean of its neighbours)"
    unit_interval = True
    aggregation = "per triplet (a+2j, a+2j+1, a+2j+2) inside the segment, ceil(n/2) − 1 of them, mean error"
    higher_is_better = True
    min_frames = 3
    context = 2

    def run_value(self, frames: list[np.ndarray]) -> float:
        pred = (frames[0].astype(np.int16) + frames[2].astype(np.int16)) >> 1  # truncated midpoint
        return float(np.abs(pred - frames[1].astype(np.int16)).sum(dtype=np.int64) / pred.size)

    def score(self, a: int, b: int) -> float:
        # values[k] is the triplet starting at k; VBench keeps even offsets from the clip start
        err = self.values[a : b - 2 : 2].mean()
        return float((255.0 - err) / 255.0)


class ColourHistogramDistance(Metric):
    name = "colour_histogram_distance"
    kind = "distance"
    definition = (
        "total variation ½Σ|p − q| between the segments' joint RGB histograms (8 bins per channel, 512 bins; "
        "each frame's histogram normalised, then averaged over the segment's frames)"
    )
    scale = "0–1 (0 = same colour distribution, 1 = no colour in common)"
    unit_interval = True
    aggregation = "one histogram per segment (mean of per-frame histograms); one distance, no per-segment score"
    higher_is_better = False

    def begin(self, num_frames: int, wanted: np.ndarray | None = None) -> None:
        self.hists = np.zeros((num_frames, 1 << (3 * HIST_BITS)), dtype=np.float32)  # (N, 512)
        self.seen = 0

    def update(self, frames: np.ndarray, start: int) -> None:
        assert start == self.seen, "frames must arrive in order"
        for k, frame in enumerate(frames):
            self.hists[start + k] = colour_histogram(frame)
        self.seen += len(frames)

    def histogram(self, a: int, b: int) -> np.ndarray:
        return self.hists[a:b].astype(np.float64).mean(axis=0)

    def distance(self, ref: tuple[int, int], other: tuple[int, int]) -> float:
        return float(0.5 * np.abs(self.histogram(*ref) - self.histogram(*other)).sum())


PIXEL_METRICS: dict[str, type[Metric]] = {
    m.name: m
    for m in (Brightness, Sharpness, Colourfulness, TemporalFlickering, MotionSmoothnessLinear, ColourHistogramDistance)
}

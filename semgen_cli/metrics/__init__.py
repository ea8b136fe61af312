"""Quality metrics for `semgen drift`, one module per family.

- `pixel`: weight-free metrics on decoded RGB pixels (brightness, sharpness, colourfulness,
  temporal flickering, linear-interpolation motion smoothness, colour-histogram distance).
- `models`: metrics that need a network loaded from a local folder (subject consistency with
  DINO ViT-B/16, background consistency with CLIP ViT-B/32, aesthetic quality with CLIP ViT-L/14
  and a LAION head), computed as VBench computes them (docs/drift.md, reference §1, §2, §5).

Every metric streams: `begin(num_frames)`, then `update(frames, start)` over consecutive chunks
of `(B, H, W, 3)` uint8 frames, then `score(a, b)` gives M on frames `[a, b)` as if that range
were the whole clip (so Δdrift = |score(first) − score(last)|, FramePack eq. 7). A "distance"
metric instead compares two ranges directly (`distance(ref, other)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class Metric:
    """Base class: a streaming per-frame (or per-pair) statistic with a segment aggregator."""

    name: str = ""
    kind: str = "score"  # "score": M(first), M(last), Δ | "distance": d(first, last)
    definition: str = ""
    scale: str = ""
    unit_interval: bool = False  # scored on 0–1, so Δ in points (0–100, as papers report) is 100·Δ
    aggregation: str = ""
    higher_is_better: bool | None = None
    min_frames: int = 1  # fewest frames a segment needs for a defined score

    def begin(self, num_frames: int, wanted: np.ndarray | None = None) -> None:
        """A new video of `num_frames` frames starts; `wanted` (bool, (N,)) marks the frames a
        costly metric must see (the rest may be skipped); None means all."""
        raise NotImplementedError

    def update(self, frames: np.ndarray, start: int) -> None:
        """Frames `(B, H, W, 3)` uint8 with global indices `start … start+B-1`, in order."""
        raise NotImplementedError

    def score(self, a: int, b: int) -> float:
        """M of the frames `[a, b)`."""
        raise NotImplementedError

    def distance(self, ref: tuple[int, int], other: tuple[int, int]) -> float:
        """Distance between the frames of two ranges (only for kind == "distance")."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What this metric is and how it was computed (goes into the output verbatim)."""
        return {
            "kind": self.kind,
            "definition": self.definition,
            "scale": self.scale,
            "unit_interval": self.unit_interval,
            "aggregation": self.aggregation,
            "higher_is_better": self.higher_is_better,
            "model": None,
            "fingerprint": None,
            "image_size": "native (decoded frames, no resize)",
        }


@dataclass(frozen=True)
class MetricSpec:
    """A metric as the user names it: which family builds it and which flags it needs."""

    name: str
    family: str  # "pixel" | "model"
    needs: tuple[str, ...] = ()  # option names (e.g. "--dino") that must point at local files
    summary: str = ""


SPECS: dict[str, MetricSpec] = {
    s.name: s
    for s in [
        MetricSpec("brightness", "pixel", summary="mean Rec.601 luma, 0–1"),
        MetricSpec("sharpness", "pixel", summary="variance of the Laplacian of luma"),
        MetricSpec("colourfulness", "pixel", summary="Hasler–Süsstrunk colourfulness"),
        MetricSpec("temporal_flickering", "pixel", summary="VBench: (255 − mean |f_i − f_i+1|)/255"),
        MetricSpec("motion_smoothness_linear", "pixel", summary="VBench motion smoothness, linear midpoint instead of AMT"),
        MetricSpec("colour_histogram_distance", "pixel", summary="total variation between segment RGB histograms"),
        MetricSpec("subject_consistency", "model", ("--dino",), "VBench, DINO ViT-B/16"),
        MetricSpec("background_consistency", "model", ("--clip-b32",), "VBench, CLIP ViT-B/32"),
        MetricSpec("aesthetic_quality", "model", ("--clip-l14", "--aesthetic-head"), "VBench, CLIP ViT-L/14 + LAION head"),
    ]
}

WEIGHT_FREE = tuple(n for n, s in SPECS.items() if s.family == "pixel")
MODEL_METRICS = tuple(n for n, s in SPECS.items() if s.family == "model")

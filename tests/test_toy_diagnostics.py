"""Two diagnostics of examples/toy: vae_ceiling.py (judge scores of rendered clips round-tripped
through a VAE, overall and per true shape; the bundled toy VAE, a few short clips) and
caption_similarity.py (how alike the text encoder makes captions that differ in motion)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "toy" / "vae_ceiling.py"


def test_vae_ceiling_reports_shape_accuracy_per_true_shape():
    r = subprocess.run([sys.executable, str(SCRIPT), "toy", "--clips", "3", "--frames", "5"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    per = out["shape_accuracy_percent_by_shape"]
    assert sum(v["clips"] for v in per.values()) == 3 and set(per) <= {"circle", "square", "triangle"}
    assert all(0 <= v["frames_percent"] <= 100 for v in per.values())
    mean = sum(v["clips"] * v["frames_percent"] for v in per.values()) / 3  # per-shape means weight back to the total
    assert abs(mean - out["judge_frame_accuracy_percent"]["shape"]) < 0.2
    assert out["judge_frame_accuracy_percent"]["background"] > 90  # the bundled VAE keeps flat backgrounds


CAPTIONS = Path(__file__).resolve().parents[1] / "examples" / "toy" / "caption_similarity.py"


def test_caption_similarity_prints_a_symmetric_cosine_table():
    r = subprocess.run([sys.executable, str(CAPTIONS)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cos = json.loads(r.stdout)["cosine"]
    assert set(cos) == {"left", "right", "up", "down"}
    for a in cos:
        assert abs(cos[a][a] - 1) < 1e-3
        for b in cos:
            assert cos[a][b] == cos[b][a] and -1 <= cos[a][b] <= 1.0001
    assert cos["left"]["right"] < 1  # different words, different embeddings
    bad = subprocess.run([sys.executable, str(CAPTIONS), "--caption", "no slot"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--caption" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1

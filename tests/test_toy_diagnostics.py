"""Two diagnostics of examples/toy/diagnostics: vae_ceiling.py (judge scores of rendered clips
round-tripped through a VAE, overall and per true shape; the bundled toy VAE, a few short clips)
and caption_similarity.py (how alike the text encoder makes captions that differ in motion), run
in this process through their `main(argv)`; and the PSNR helpers they share with train_vae.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semgen_cli.toy.fidelity import latent_frame_spans, psnr
from tests.conftest import load_example


def test_vae_ceiling_reports_shape_accuracy_per_true_shape(capsys):
    load_example("toy/diagnostics/vae_ceiling.py").main(["toy", "--clips", "3", "--frames", "5"])
    out = json.loads(capsys.readouterr().out)
    per = out["shape_accuracy_percent_by_shape"]
    assert sum(v["clips"] for v in per.values()) == 3 and set(per) <= {"circle", "square", "triangle"}
    assert all(0 <= v["frames_percent"] <= 100 for v in per.values())
    mean = sum(v["clips"] * v["frames_percent"] for v in per.values()) / 3  # per-shape means weight back to the total
    assert abs(mean - out["judge_frame_accuracy_percent"]["shape"]) < 0.2
    assert out["judge_frame_accuracy_percent"]["background"] > 90  # the bundled VAE keeps flat backgrounds
    assert len(out["psnr_per_latent_frame"]) == 2  # 5 frames: the first alone, then one chunk of 4


def test_caption_similarity_prints_a_symmetric_cosine_table(capsys):
    script = load_example("toy/diagnostics/caption_similarity.py")
    script.main([])
    cos = json.loads(capsys.readouterr().out)["cosine"]
    assert set(cos) == {"left", "right", "up", "down"}
    for a in cos:
        assert abs(cos[a][a] - 1) < 1e-3
        for b in cos:
            assert cos[a][b] == cos[b][a] and -1 <= cos[a][b] <= 1.0001
    assert cos["left"]["right"] < 1  # different words, different embeddings
    with pytest.raises(SystemExit) as bad:
        script.main(["--caption", "no slot"])
    assert "--caption" in str(bad.value.code) and len(str(bad.value.code).splitlines()) == 1


def test_latent_frame_spans_and_psnr():
    assert latent_frame_spans(9) == [(0, 1), (1, 5), (5, 9)]
    assert latent_frame_spans(7) == [(0, 1), (1, 5), (5, 7)]
    assert latent_frame_spans(17, stride=8) == [(0, 1), (1, 9), (9, 17)]
    a = np.zeros((2, 4, 4, 3), np.uint8)
    assert psnr(a, a) == float("inf")
    assert abs(psnr(a, a + 255) - 0.0) < 1e-9  # the largest error is 0 dB
    assert abs(psnr(a, a + 1) - 20 * np.log10(255)) < 1e-9

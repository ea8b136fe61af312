"""examples/toy/diagnostics/plan_probe.py finds the odd token out in a plan frame and scores its steps, with
wrap-around; on the bundled pipeline's rendered clips every step is forward (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import load_example

PROBE = Path(__file__).resolve().parents[1] / "examples" / "toy" / "diagnostics" / "plan_probe.py"


def _probe():
    return load_example("toy/diagnostics/plan_probe.py")


def _plan(cells: list[tuple[int, int]], grid=(4, 4), c: int = 8) -> torch.Tensor:
    """Background tokens all alike (plus a little noise), the object token different."""
    g = torch.Generator().manual_seed(0)
    plan = torch.ones(len(cells), *grid, c) * 0.3 + 0.01 * torch.randn(len(cells), *grid, c, generator=g)
    for t, (x, y) in enumerate(cells):
        plan[t, y, x] = -2.0
    return plan


def test_locate_finds_the_object_cell():
    probe = _probe()
    cells = [(0, 0), (3, 1), (2, 3), (1, 2)]
    pos = probe.locate(_plan(cells))
    assert torch.allclose(pos, torch.tensor(cells, dtype=torch.float32), atol=0.05)


def test_forward_steps_follow_the_direction_with_wrap_around():
    probe = _probe()
    right = probe.locate(_plan([(2, 1), (3, 1), (0, 1), (1, 1)]))  # wraps from x=3 to x=0
    assert probe.forward_steps(right, "right", (4, 4)).tolist() == [1, 1, 1]
    assert probe.forward_steps(right, "left", (4, 4)).tolist() == [0, 0, 0]
    assert probe.forward_steps(right, "still", (4, 4)).tolist() == [0, 0, 0]
    jitter = probe.locate(_plan([(1, 2), (1, 3), (1, 2), (1, 2)]))
    assert probe.forward_steps(jitter, "down", (4, 4)).tolist() == [1, 0, 0]
    assert probe.forward_steps(jitter, "still", (4, 4)).tolist() == [0, 0, 1]


def test_right_way_tells_a_wrong_direction_from_jitter():
    probe = _probe()
    left = probe.locate(_plan([(2, 1), (1, 1), (0, 1), (3, 1)]))  # steady leftward, wrapping from x=0 to x=3
    assert probe.right_way(left, "left", (4, 4)) == 1.0 and probe.right_way(left, "right", (4, 4)) == 0.0
    assert probe.right_way(left, "still", (4, 4)) == 0.0
    jitter = probe.locate(_plan([(2, 1), (3, 1), (1, 1), (2, 1), (0, 1)], grid=(4, 8)))  # +1, -2, +1, -2 cells
    assert probe.forward_steps(jitter, "right", (4, 8)).mean() == 0.5
    assert probe.right_way(jitter, "right", (4, 8)) == 0.0 and probe.right_way(jitter, "left", (4, 8)) == 1.0


@pytest.mark.slow
def test_rendered_clips_score_forward_on_the_bundle():
    r = subprocess.run([sys.executable, str(PROBE), "--seconds", "8", "--count", "2", "--references", "5", "--steps", "4", "--text-band", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["forward_fraction"]["rendered"]["all"] >= 0.9
    assert out["right_way_fraction"]["rendered"]["all"] == 1.0
    assert 0.0 <= out["forward_fraction"]["sampled"]["all"] <= 1.0
    band = out["text_band"]
    assert list(band) == ["0.5", "0.7", "0.8", "0.9", "0.95"]
    assert all(0.0 <= v <= 1.0 for row in band.values() for v in row.values())
    assert band["0.5"]["true caption"] == 1.0  # at half noise the plan itself still shows the way


def test_text_band_needs_references():
    r = subprocess.run([sys.executable, str(PROBE), "--text-band", "--references", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--text-band needs --references" in r.stderr

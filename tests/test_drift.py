"""`semgen drift`: segment edges, each weight-free metric's Δ against a hand computation on
lossless synthetic videos, streaming invariance, JSON keys, the plot, and every error path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from semgen_cli.errors import ConfigError
from semgen_cli.metrics import pixel as P
from semgen_cli.steps.drift import DriftConfig, measure_drift, segment_ranges

A = (200, 40, 40)  # Y = 87.84
B = (40, 60, 220)  # Y = 72.26
ALL_PIXEL = (
    "brightness",
    "sharpness",
    "colourfulness",
    "temporal_flickering",
    "motion_smoothness_linear",
    "colour_histogram_distance",
)


def write_lossless(path: Path, frames: np.ndarray, fps: int = 8) -> Path:
    """RGB H.264 at crf 0 (libx264rgb): decoded pixels equal `frames` exactly."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264rgb", rate=fps)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "rgb24"
        s.options = {"crf": "0"}
        for f in frames:
            for pk in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    return path


def solid(colours, size: int = 32) -> np.ndarray:
    """(F, size, size, 3) uint8, frame k filled with colours[k]."""
    return np.stack([np.full((size, size, 3), c, np.uint8) for c in colours])


def run_main(*args: str, capsys) -> tuple[int, str, str]:
    """Run the console entry point in-process (as users run it): exit code, stdout, stderr."""
    from semgen_cli.cli.app import main

    argv, sys.argv = sys.argv, ["semgen", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- segments


@pytest.mark.parametrize(
    "frames, segment, first, last",
    [
        (80, 0.15, (0, 12), (68, 80)),
        (37, 0.15, (0, 5), (32, 37)),  # 5.55 → 5
        (41, 0.15, (0, 6), (35, 41)),  # 6.15 → 6
        (140, 0.15, (0, 21), (119, 140)),  # 0.15·140 = 20.999999999999996 in floats: still 21
        (20, 0.15, (0, 3), (17, 20)),
        (7, 0.15, (0, 3), (4, 7)),  # floor(1.05) = 1, raised to the 3-frame minimum
        (6, 0.15, (0, 3), (3, 6)),
        (101, 0.5, (0, 50), (51, 101)),
        (100, 0.1, (0, 10), (90, 100)),
    ],
)
def test_segment_edges(frames, segment, first, last):
    assert segment_ranges(frames, segment) == (first, last)


def test_segments_that_would_overlap_are_refused():
    with pytest.raises(ValueError):
        segment_ranges(5, 0.15)


# ----------------------------------------------------------------------------- metric definitions


def test_laplacian_variance_single_pixel_and_opencv_borders():
    from scipy import ndimage

    img = np.zeros((5, 5), np.float32)
    img[2, 2] = 10.0
    # Laplacian: −40 at the centre, +10 at its 4 neighbours, 0 elsewhere → var = (1600 + 400)/25
    assert P.laplacian_variance(img) == pytest.approx(80.0)
    rng = np.random.default_rng(0)
    g = rng.uniform(0, 255, (9, 13)).astype(np.float32)
    # scipy's "mirror" is OpenCV's BORDER_REFLECT_101
    assert P.laplacian_variance(g) == pytest.approx(ndimage.laplace(g.astype(np.float64), mode="mirror").var(), rel=1e-5)


def test_colourfulness_half_and_half():
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[:, :2], frame[:, 2:] = A, B
    # rg ∈ {160, −20}: μ 70, σ 90; yb ∈ {80, −170}: μ −45, σ 125
    expected = np.hypot(90, 125) + 0.3 * np.hypot(70, 45)
    assert P.colourfulness(frame) == pytest.approx(expected)


def test_histogram_bins_are_top_three_bits():
    h = P.colour_histogram(np.array([[A, B]], np.uint8))
    assert h[(6 << 6) | (1 << 3) | 1] == 0.5 and h[(1 << 6) | (1 << 3) | 6] == 0.5 and h.sum() == 1.0


# ----------------------------------------------------------------------------- Δ on synthetic videos


def test_brightness_ramp(tmp_path):
    # 37 grey frames, level 4·i: segments [0,5) and [32,37) have mean level 8 and 136
    path = write_lossless(tmp_path / "ramp.mp4", solid([(4 * i,) * 3 for i in range(37)]))
    r = measure_drift([path], ALL_PIXEL).videos[0]
    m = r.metrics
    assert (r.first, r.last, r.frames_read) == ((0, 5), (32, 37), 37)
    assert m["brightness"].first == pytest.approx(8 / 255) and m["brightness"].last == pytest.approx(136 / 255)
    assert m["brightness"].delta == pytest.approx(128 / 255)
    assert m["brightness"].change == pytest.approx(128 / 255)
    assert m["brightness"].relative_change_pct == pytest.approx(1600.0)
    assert m["brightness"].delta_points == pytest.approx(100 * 128 / 255)  # the papers' 0–100 points
    # every consecutive pair differs by 4 levels → flicker (255 − 4)/255 in both segments
    assert m["temporal_flickering"].first == pytest.approx(251 / 255) and m["temporal_flickering"].delta == pytest.approx(0)
    # a linear ramp is exactly its own linear interpolation
    assert m["motion_smoothness_linear"].first == 1.0 and m["motion_smoothness_linear"].delta == 0.0
    assert m["sharpness"].delta == 0.0 and m["colourfulness"].delta == pytest.approx(0.0, abs=1e-9)
    # levels 0..16 fall in bin 0, levels 128..144 in bin 4 of each channel: nothing in common
    assert m["colour_histogram_distance"].delta == pytest.approx(1.0)
    assert m["colour_histogram_distance"].first is None


def test_colour_switch_at_90_percent(tmp_path):
    # 40 frames: A for 0..35, B from frame 36 (= 0.9·40). Segments of 6: [0,6) all A, [34,40) = A A B B B B
    path = write_lossless(tmp_path / "switch.mp4", solid([A] * 36 + [B] * 4))
    m = measure_drift([path], ALL_PIXEL).videos[0].metrics
    ya, yb = 0.299 * 200 + 0.587 * 40 + 0.114 * 40, 0.299 * 40 + 0.587 * 60 + 0.114 * 220
    assert m["brightness"].first == pytest.approx(ya / 255)
    assert m["brightness"].last == pytest.approx((2 * ya + 4 * yb) / 6 / 255)
    assert m["brightness"].delta == pytest.approx(4 / 6 * (ya - yb) / 255)
    ca, cb = 0.3 * np.hypot(160, 80), 0.3 * np.hypot(-20, -170)  # flat frames: σ = 0
    assert m["colourfulness"].delta == pytest.approx(abs(ca - (2 * ca + 4 * cb) / 6))
    # 5 pairs in the last segment, one of them A→B with MAE (160 + 20 + 180)/3 = 120
    assert m["temporal_flickering"].first == 1.0
    assert m["temporal_flickering"].last == pytest.approx((255 - 120 / 5) / 255)
    assert m["temporal_flickering"].delta == pytest.approx(24 / 255)
    # triplets start at 34 and 36: floor((A + B)/2) = (120, 50, 130) vs A → errors 80, 10, 90; B B B → 0
    assert m["motion_smoothness_linear"].last == pytest.approx((255 - 30) / 255)
    assert m["motion_smoothness_linear"].delta == pytest.approx(30 / 255)
    # first: all mass in A's bin; last: 1/3 in A's, 2/3 in B's → ½(2/3 + 2/3)
    assert m["colour_histogram_distance"].delta == pytest.approx(2 / 3)
    assert m["sharpness"].delta == 0.0


def test_sharpness_flat_to_checkerboard(tmp_path):
    y, x = np.mgrid[0:32, 0:32]
    board = np.repeat((((x + y) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    frames = np.concatenate([solid([(128,) * 3] * 10), np.stack([board] * 10)])
    m = measure_drift([write_lossless(tmp_path / "sharp.mp4", frames)], ["sharpness"]).videos[0].metrics
    # every Laplacian value is ±4·255 (borders reflect onto opposite-coloured pixels too)
    assert m["sharpness"].first == 0.0
    assert m["sharpness"].last == pytest.approx(1020.0**2, rel=1e-5)


def test_static_video_has_no_drift(tmp_path):
    path = write_lossless(tmp_path / "static.mp4", solid([(120, 90, 60)] * 30))
    m = measure_drift([path], ALL_PIXEL).videos[0].metrics
    assert all(r.delta == pytest.approx(0.0, abs=1e-12) for r in m.values())
    assert m["temporal_flickering"].first == 1.0


def test_chunking_does_not_change_results(tmp_path):
    rng = np.random.default_rng(1)
    path = write_lossless(tmp_path / "noise.mp4", rng.integers(0, 256, (23, 32, 32, 3), dtype=np.uint8))
    one = measure_drift([path], config=DriftConfig(metrics=ALL_PIXEL, chunk=1, curves=True)).videos[0]
    big = measure_drift([path], config=DriftConfig(metrics=ALL_PIXEL, chunk=64, curves=True)).videos[0]
    five = measure_drift([path], config=DriftConfig(metrics=ALL_PIXEL, chunk=5)).videos[0]
    for name in ALL_PIXEL:
        assert one.metrics[name] == big.metrics[name] == five.metrics[name]
        assert one.curves[name] == big.curves[name]


def test_fps_resamples_by_timestamp(tmp_path):
    path = write_lossless(tmp_path / "ramp.mp4", solid([(4 * i,) * 3 for i in range(40)]), fps=8)
    r = measure_drift([path], ["brightness"], fps=4.0).videos[0]
    # every 2nd frame: levels 0, 8, …, 152; n = floor(0.15·20) = 3
    assert (r.frames_read, r.read_fps, r.first, r.last) == (20, 4.0, (0, 3), (17, 20))
    assert r.metrics["brightness"].first == pytest.approx(8 / 255)


def test_several_videos_and_mean(tmp_path):
    a = write_lossless(tmp_path / "a.mp4", solid([(50,) * 3] * 10 + [(200,) * 3] * 10))
    b = write_lossless(tmp_path / "b.mp4", solid([(100,) * 3] * 20))
    res = measure_drift([a, b], ["brightness"])
    assert [Path(v.path).name for v in res.videos] == ["a.mp4", "b.mp4"]
    assert res.mean()["brightness"]["delta"] == pytest.approx((150 / 255 + 0) / 2)
    assert res.mean()["brightness"]["first"] == pytest.approx((50 + 100) / 2 / 255)


# ----------------------------------------------------------------------------- bad inputs


def test_bad_videos_become_rows_in_errors(tmp_path):
    good = write_lossless(tmp_path / "good.mp4", solid([(10,) * 3] * 20))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    short = write_lossless(tmp_path / "short.mp4", solid([(10,) * 3] * 5))
    missing = tmp_path / "missing.mp4"
    res = measure_drift([missing, empty, good, corrupt, short], ["brightness"])
    assert [Path(v.path).name for v in res.videos] == ["good.mp4"]
    errors = {Path(e.path).name: e.error for e in res.errors}
    assert set(errors) == {"missing.mp4", "empty.mp4", "corrupt.mp4", "short.mp4"}
    for name, message in errors.items():
        assert name in message and "\n" not in message
    assert "no such file" in errors["missing.mp4"] and "empty" in errors["empty.mp4"]
    assert "too short" in errors["short.mp4"] and "5 frames" in errors["short.mp4"]


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"segment": 0.7}, "--segment"),
        ({"segment": 0.0}, "--segment"),
        ({"fps": -1.0}, "--fps"),
        ({"metrics": ("brightnes",)}, "--metrics"),
        ({"metrics": ("motion_smoothness",)}, "motion_smoothness_linear"),
        ({"metrics": ("subject_consistency",)}, "--dino"),
        ({"metrics": ("background_consistency",)}, "--clip-b32"),
        ({"metrics": ("aesthetic_quality",), "clip_l14": "x"}, "--aesthetic-head"),
        ({"metrics": ("subject_consistency",), "dino": "/no/such/folder"}, "--dino /no/such/folder"),
    ],
)
def test_config_errors_name_the_flag(tmp_path, kwargs, flag):
    path = write_lossless(tmp_path / "v.mp4", solid([(10,) * 3] * 20))
    with pytest.raises(ConfigError, match=flag.replace("-", r"\-")):
        metrics = kwargs.pop("metrics", None)
        measure_drift([path], metrics, config=None, **kwargs) if metrics is None else measure_drift([path], metrics, **kwargs)


def test_default_metrics_are_weight_free():
    from semgen_cli.steps.drift import resolve_metrics

    assert resolve_metrics(DriftConfig()) == list(ALL_PIXEL)


# ----------------------------------------------------------------------------- CLI


def test_cli_json_documented_keys(tmp_path, capsys):
    jump = write_lossless(tmp_path / "jump.mp4", solid([(50,) * 3] * 40 + [(200,) * 3] * 40))
    static = write_lossless(tmp_path / "static.mp4", solid([(120,) * 3] * 80))
    code, out, err = run_main("drift", str(jump), str(static), "--json", capsys=capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == {"definition", "settings", "metrics", "videos", "mean", "errors"}
    assert set(doc["settings"]) >= {"segment", "segment_rule", "fps", "pixels", "device"}
    for d in doc["metrics"].values():
        assert set(d) == {"kind", "definition", "scale", "unit_interval", "aggregation", "higher_is_better", "model", "fingerprint", "image_size"}
    v = doc["videos"][0]
    assert set(v) >= {"path", "frames_total", "native_fps", "width", "height", "frames_read", "read_fps", "segments", "model_input", "metrics"}
    assert v["segments"] == {"frames_each": 12, "first": {"start": 0, "stop": 12, "seconds": [0.0, 1.5]}, "last": {"start": 68, "stop": 80, "seconds": [8.5, 10.0]}}
    assert set(v["metrics"]["brightness"]) == {"first", "last", "delta", "delta_points", "relative_change_pct", "change"}
    assert v["metrics"]["brightness"]["delta"] == pytest.approx(150 / 255)
    assert v["metrics"]["brightness"]["delta_points"] == pytest.approx(100 * 150 / 255)
    assert v["metrics"]["sharpness"]["delta_points"] is None  # levels², not a 0–1 scale
    assert doc["videos"][1]["metrics"]["brightness"]["delta"] == 0.0
    assert doc["mean"]["videos"] == 2 and doc["mean"]["metrics"]["brightness"]["delta"] == pytest.approx(75 / 255)
    assert doc["errors"] == [] and "curves" not in v


def test_cli_table_states_choices(tmp_path, capsys):
    path = write_lossless(tmp_path / "clip.mp4", solid([(50,) * 3] * 40 + [(200,) * 3] * 40))
    code, out, err = run_main("drift", str(path), "-m", "brightness,temporal_flickering", capsys=capsys)
    assert code == 0, err
    assert "0.5882" in out and "80 of 80 frames read at 8 fps" in out
    assert "Δ pts" in out and "(100·Δ)" in out and "58.82" in out and "rel. change" in out and "300.0" in out
    assert "first [0, 12), last [68, 80)" in out and "per consecutive pair" in out


def test_cli_plot_writes_png(tmp_path, capsys):
    path = write_lossless(tmp_path / "clip.mp4", solid([(4 * i,) * 3 for i in range(30)]))
    png = tmp_path / "out" / "drift.png"
    code, out, err = run_main("drift", str(path), "--plot", str(png), "--json", capsys=capsys)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = json.loads(out)["videos"][0]["curves"]
    assert curves["window_frames"] == 4 and len(curves["t"]) == 27 == len(curves["brightness"])
    assert curves["brightness"][0] == pytest.approx(6 / 255)  # window [0, 4): levels 0, 4, 8, 12


def test_cli_bad_videos_one_line_each_exit_2(tmp_path, capsys):
    good = write_lossless(tmp_path / "good.mp4", solid([(10,) * 3] * 20))
    corrupt = tmp_path / "bad.mp4"
    corrupt.write_bytes(b"\x00not a video" * 200)
    code, out, err = run_main("drift", str(corrupt), str(good), str(tmp_path / "gone.mp4"), "--json", capsys=capsys)
    assert code == 2
    doc = json.loads(out)
    assert [Path(v["path"]).name for v in doc["videos"]] == ["good.mp4"]
    assert {Path(e["path"]).name for e in doc["errors"]} == {"bad.mp4", "gone.mp4"}
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 2 and all(ln.startswith("error:") for ln in lines)
    assert "bad.mp4" in lines[0] and "gone.mp4" in lines[1]


def test_cli_config_error_is_one_red_line(capsys, tmp_path):
    code, out, err = run_main("drift", str(tmp_path / "x.mp4"), "--segment", "0.8", capsys=capsys)
    assert code == 2 and err.strip().startswith("error: --segment 0.8") and len(err.strip().splitlines()) == 1
    code, out, err = run_main("drift", str(tmp_path / "x.mp4"), "-m", "subject_consistency", capsys=capsys)
    assert code == 2 and "--dino" in err


def test_cli_help_lists_metrics_and_flags():
    from typer.testing import CliRunner

    from semgen_cli.cli.app import app

    res = CliRunner().invoke(app, ["drift", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for word in ("--metrics", "--segment", "--json", "--plot", "--dino", "--clip-b32", "--clip-l14", "--aesthetic-head", "motion_smoothness_linear"):
        assert word in res.output


# ----------------------------------------------------------------------------- --aggregate vde


def test_vde_by_hand(tmp_path):
    from semgen_cli.steps.drift import chunk_ranges, video_drift_error

    assert chunk_ranges(33, 10)[:2] == [(0, 3), (3, 6)] and chunk_ranges(33, 10)[-1] == (29, 33)
    with pytest.raises(ValueError):
        chunk_ranges(29, 10)  # a chunk of 2 frames
    # M_1 = 1; chunks 2..4 at 1.5, 1, 0.5 with weights 3, 2, 1: 3·0.5 + 2·0 + 1·0.5 = 2
    assert video_drift_error([1.0, 1.5, 1.0, 0.5]) == pytest.approx(2.0)
    with pytest.raises(ZeroDivisionError):
        video_drift_error([0.0, 1.0])
    # a 50 → 200 grey jump at half length: chunks 6..10 of 10 change by 3·M_1, weights 5+4+3+2+1
    path = write_lossless(tmp_path / "jump.mp4", solid([(50,) * 3] * 40 + [(200,) * 3] * 40))
    r = measure_drift([path], ["brightness", "colour_histogram_distance"], aggregate="vde").videos[0]
    assert r.metrics["brightness"].chunks == pytest.approx([50 / 255] * 5 + [200 / 255] * 5)
    assert r.metrics["brightness"].vde == pytest.approx(45.0)
    assert r.metrics["colour_histogram_distance"].vde is None  # a distance has no per-chunk score
    five = measure_drift([path], ["brightness"], aggregate="vde", chunks=4).videos[0].metrics["brightness"]
    assert five.vde == pytest.approx(3 * 2 + 3 * 1)  # chunks 3, 4 of 4 changed, weights 2, 1


def test_cli_vde_table_json_and_default_shape(tmp_path, capsys):
    path = write_lossless(tmp_path / "jump.mp4", solid([(50,) * 3] * 40 + [(200,) * 3] * 40))
    code, out, err = run_main("drift", str(path), "-m", "brightness", "--aggregate", "vde", "--chunks", "5", capsys=capsys)
    assert code == 0, err
    assert "VDE" in out and "over 5 equal chunks" in out
    code, out, err = run_main("drift", str(path), "-m", "brightness", "--aggregate", "vde", "--json", capsys=capsys)
    doc = json.loads(out)
    assert doc["settings"]["aggregate"] == "vde" and doc["settings"]["chunks"] == 10
    assert doc["videos"][0]["metrics"]["brightness"]["vde"] == pytest.approx(45.0)
    assert doc["mean"]["metrics"]["brightness"]["vde"] == pytest.approx(45.0)
    # `semgen drift VIDEO` as the README runs it: no VDE keys, the start-end table
    code, out, err = run_main("drift", str(path), capsys=capsys)
    assert code == 0, err
    assert "VDE" not in out and "Δ pts" in out and "58.82" in out


def test_cli_vde_errors_are_one_line_exit_2(tmp_path, capsys):
    dark = write_lossless(tmp_path / "dark.mp4", solid([(0,) * 3] * 20 + [(90,) * 3] * 20))
    code, out, err = run_main("drift", str(dark), "-m", "brightness", "--aggregate", "vde", "--json", capsys=capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1
    assert "brightness is 0 on the first chunk (frames [0, 4))" in lines[0] and "inf" not in out
    assert json.loads(out)["videos"] == []
    short = write_lossless(tmp_path / "short.mp4", solid([(90,) * 3] * 20))
    code, out, err = run_main("drift", str(short), "-m", "brightness", "--aggregate", "vde", capsys=capsys)
    assert code == 2 and "too short for --aggregate vde with 10 chunks: 20 frames read, need at least 30" in err
    for args, msg in ((["--aggregate", "mean"], "--aggregate mean: must be one of ends, vde"),
                      (["--aggregate", "vde", "--chunks", "1"], "--chunks 1: the VDE needs at least 2 chunks")):
        code, out, err = run_main("drift", str(short), *args, capsys=capsys)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err

"""The toy world (DESIGN §6): palette, sizes, wrap-around motion, caption grammar, determinism,
and `semgen toy-data` with every error path."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.toy.dataset import ToyDataConfig, write_toy_dataset
from semgen_cli.toy.world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    MOTIONS,
    SHAPES,
    VELOCITY,
    ClipSpec,
    all_combos,
    caption,
    parse_caption,
    parse_combos,
    render,
    render_iter,
    sample_spec,
)


def spec(**kw) -> ClipSpec:
    base = dict(colour="red", shape="square", background="navy", motion="right", size=12, speed=2.0, x=20.0, y=30.0, seconds=1.0)
    base.update(kw)
    return ClipSpec(**base)


def object_mask(frames: np.ndarray, s: ClipSpec) -> np.ndarray:
    return (frames == np.array(COLOURS[s.colour], dtype=np.uint8)).all(-1)  # (F, H, W)


# 1. Palette and colour contract -----------------------------------------------------------------


def test_palette_is_the_design_contract():
    assert COLOURS == {
        "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 230), "yellow": (235, 215, 40),
        "white": (240, 240, 240), "orange": (240, 140, 30), "purple": (150, 60, 200), "cyan": (40, 210, 220),
    }  # fmt: skip
    assert BACKGROUNDS == {"black": (10, 10, 10), "gray": (110, 110, 110), "navy": (20, 30, 90), "brown": (90, 60, 30)}
    assert SHAPES == ("circle", "square", "triangle")
    assert len(all_combos()) == 96


@pytest.mark.parametrize("colour", list(COLOURS))
@pytest.mark.parametrize("background", list(BACKGROUNDS))
def test_every_pixel_is_exactly_background_or_object(colour, background):
    s = spec(colour=colour, background=background, shape="circle", seconds=0.5)
    frames = render(s)
    assert frames.dtype == np.uint8 and frames.shape == (4, 64, 64, 3)
    obj = object_mask(frames, s)
    bg = (frames == np.array(BACKGROUNDS[background], dtype=np.uint8)).all(-1)
    assert (obj ^ bg).all()
    assert obj.any(axis=(1, 2)).all() and bg.sum() > obj.sum()


def test_defaults_are_64px_8fps():
    s = spec(seconds=2.0)
    assert (s.width, s.height, s.fps, s.num_frames) == (64, 64, 8.0, 16)
    assert render(s).shape == (16, 64, 64, 3)


# 2. Sizes and shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", range(10, 21))
def test_square_is_exactly_size_by_size(size):
    s = spec(shape="square", size=size, motion="still", speed=0.0, x=31.37, y=29.81, seconds=0.125)
    ys, xs = np.nonzero(object_mask(render(s), s)[0])
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1, len(ys)) == (size, size, size * size)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [10, 15, 20])
def test_shapes_fit_their_size(shape, size):
    s = spec(shape=shape, size=size, motion="still", speed=0.0, x=32.3, y=32.6, seconds=0.125)
    m = object_mask(render(s), s)[0]
    ys, xs = np.nonzero(m)
    assert ys.max() - ys.min() + 1 <= size and xs.max() - xs.min() + 1 <= size
    fill = m.sum() / size**2
    assert {"square": 0.99 <= fill <= 1.0, "circle": 0.7 < fill < 0.86, "triangle": 0.4 < fill < 0.6}[shape]
    if shape == "triangle":  # points up: the top half holds about a quarter of it
        top = m[: int(round(ys.mean()))].sum() / m.sum()
        assert top < 0.45


def test_sampled_sizes_and_speeds_stay_in_range():
    rng = np.random.default_rng(0)
    specs = [sample_spec(rng) for _ in range(300)]
    assert {s.size for s in specs} == set(range(10, 21))
    assert all(1.0 <= s.speed <= 3.0 for s in specs if s.motion != "still")
    assert all(s.speed == 0 for s in specs if s.motion == "still")
    assert {s.motion for s in specs} == set(MOTIONS)
    assert {s.colour for s in specs} == set(COLOURS) and {s.background for s in specs} == set(BACKGROUNDS)


# 3. Motion with wrap-around ---------------------------------------------------------------------


def _centroids(mask: np.ndarray) -> np.ndarray:
    """(F, 2) circular-mean (x, y) of the object on the torus."""
    f, h, w = mask.shape
    out = []
    for m in mask:
        ys, xs = np.nonzero(m)
        cx = np.angle(np.exp(2j * np.pi * (xs + 0.5) / w).mean()) / (2 * np.pi) * w % w
        cy = np.angle(np.exp(2j * np.pi * (ys + 0.5) / h).mean()) / (2 * np.pi) * h % h
        out.append((cx, cy))
    return np.array(out)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_wrap_around_keeps_speed_direction_and_shape(direction):
    # Starts next to an edge and crosses it (and more: 40 frames × 2 px > 64 px).
    s = spec(motion=direction, speed=2.0, x=60.0, y=3.0, seconds=5.0, shape="square")
    mask = object_mask(render(s), s)
    assert (mask.sum(axis=(1, 2)) == s.size**2).all()  # whole object visible every frame, drawn across the edge
    straddles = mask[:, :, 0].any(1) & mask[:, :, -1].any(1) | mask[:, 0, :].any(1) & mask[:, -1, :].any(1)
    assert straddles.any()
    c = _centroids(mask)
    step = (np.diff(c, axis=0) + 32) % 64 - 32  # (F-1, 2) circular difference
    np.testing.assert_allclose(step, np.tile(np.array(VELOCITY[direction]) * 2.0, (len(step), 1)), atol=1e-6)
    # The frame after a full lap (32 frames at 2 px) equals the first.
    assert (render(s)[32] == render(s)[0]).all()


def test_standing_still_is_constant():
    frames = render(spec(motion="still", speed=0.0, x=0.5, y=63.2))
    assert (frames == frames[0]).all()


def test_render_iter_streams_the_same_frames():
    s = spec(seconds=10.0, shape="triangle", motion="up", speed=1.37)
    chunks = list(render_iter(s, chunk=7))
    assert max(len(c) for c in chunks) == 7
    assert np.array_equal(np.concatenate(chunks), render(s))
    with pytest.raises(ConfigError):
        next(render_iter(s, chunk=0))


# 4. Determinism ---------------------------------------------------------------------------------


def test_same_seed_same_spec_and_bytes_different_seed_differs():
    a = sample_spec(np.random.default_rng(7), seconds=2.0)
    b = sample_spec(np.random.default_rng(7), seconds=2.0)
    c = sample_spec(np.random.default_rng(8), seconds=2.0)
    assert a == b and render(a).tobytes() == render(b).tobytes()
    assert a != c and render(a).tobytes() != render(c).tobytes()


# 5. Captions ------------------------------------------------------------------------------------


def test_caption_grammar_exact():
    assert spec().caption == "a red square moving right on a navy background"
    assert spec(motion="still", speed=0.0).caption == "a red square standing still on a navy background"


def test_every_caption_round_trips():
    for colour, shape, background in all_combos():
        for motion in MOTIONS:
            attrs = {"colour": colour, "shape": shape, "background": background, "motion": motion}
            assert parse_caption(caption(colour, shape, background, motion)) == attrs


def test_parse_caption_forgives_case_spaces_and_full_stop():
    assert parse_caption("  A Red  Circle moving LEFT on a gray background. ")["motion"] == "left"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a red circle",
        "a pink circle moving left on a gray background",
        "a red hexagon moving left on a gray background",
        "a red circle moving sideways on a gray background",
        "a red circle moving still on a gray background",
        "a red circle standing still on a white background",
        "a red circle moving left on a gray background and more",
    ],
)
def test_parse_caption_rejects(text):
    with pytest.raises(ConfigError, match="caption"):
        parse_caption(text)


# 6. Held-out combinations -----------------------------------------------------------------------


def test_parse_combos_with_wildcards():
    assert parse_combos("red:circle:navy") == {("red", "circle", "navy")}
    assert parse_combos(["red:*:navy", "blue:square:gray"]) == {
        ("red", "circle", "navy"), ("red", "square", "navy"), ("red", "triangle", "navy"), ("blue", "square", "gray"),
    }  # fmt: skip
    assert len(parse_combos("*:*:*")) == 96


@pytest.mark.parametrize("text", ["red:circle", "red:circle:navy:x", "pink:circle:navy", "red:blob:navy", "red:circle:sky"])
def test_parse_combos_rejects(text):
    with pytest.raises(ConfigError, match="--exclude-combos"):
        parse_combos(text)


def test_sample_spec_never_draws_an_excluded_combo():
    held = parse_combos("red:*:*,*:circle:navy")
    rng = np.random.default_rng(1)
    combos = {sample_spec(rng, held).combo for _ in range(500)}
    assert not combos & held and len(combos) > 40
    with pytest.raises(ConfigError, match="excluded"):
        sample_spec(rng, set(all_combos()))


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(colour="pink"), "colour"),
        (dict(shape="blob"), "shape"),
        (dict(background="sky"), "background"),
        (dict(motion="sideways"), "motion"),
        (dict(size=9), "size"),
        (dict(size=21), "size"),
        (dict(speed=0.0), "speed"),
        (dict(motion="still", speed=1.0), "speed"),
        (dict(speed=-1.0), "speed"),
        (dict(seconds=0.0), "frames"),
        (dict(seconds=0.01), "frames"),
        (dict(fps=0.0), "fps"),
        (dict(width=32), "too small"),
    ],
)
def test_clip_spec_rejects(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        spec(**kw)


# 7. Dataset and CLI -----------------------------------------------------------------------------


def test_dataset_metadata_and_decoded_colours(tmp_path):
    from semgen_cli.io.video import read_video

    cfg = ToyDataConfig(count=4, seconds=1.0, seed=3, long_fraction=0.25, long_seconds=3.0)
    res = write_toy_dataset(tmp_path / "toy", cfg)
    lines = [json.loads(line) for line in (tmp_path / "toy" / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in lines] == [f"clip-{i:06d}.mp4" for i in range(4)]
    keys = {"file_name", "text", "colour", "shape", "background", "motion", "size", "speed", "seconds", "fps"}
    assert all(keys <= set(r) for r in lines)
    assert [r["seconds"] for r in lines] == [1.0, 1.0, 1.0, 3.0] and res.long_clips == 1
    assert res.frames == 8 * 6 and sorted(p.name for p in (tmp_path / "toy").iterdir()) == sorted(
        [r["file_name"] for r in lines] + ["metadata.jsonl", "toy_config.json"]
    )
    for i, r in enumerate(lines):
        s = cfg.spec(i)
        assert parse_caption(r["text"]) == s.attributes() == {k: r[k] for k in ("colour", "shape", "background", "motion")}
        frames = read_video(tmp_path / "toy" / r["file_name"])
        want = render(s)
        assert frames.shape == want.shape
        err = np.abs(frames.astype(int) - want.astype(int)).max(-1)  # (F, H, W)
        # crf 0 in yuv444p: no chroma subsampling, so every pixel, object edges included, decodes
        # within 2 levels (RGB → YUV → RGB rounding)
        assert err.max() <= 2


def test_dataset_same_seed_same_frames_and_prefix(tmp_path):
    from semgen_cli.io.video import read_video

    write_toy_dataset(tmp_path / "a", ToyDataConfig(count=2, seconds=1.0, seed=5))
    write_toy_dataset(tmp_path / "b", ToyDataConfig(count=3, seconds=1.0, seed=5))
    write_toy_dataset(tmp_path / "c", ToyDataConfig(count=2, seconds=1.0, seed=6))
    for name in ("clip-000000.mp4", "clip-000001.mp4"):
        a, b, c = (read_video(tmp_path / d / name) for d in "abc")
        assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    meta = lambda d: (tmp_path / d / "metadata.jsonl").read_text().splitlines()  # noqa: E731
    assert meta("b")[:2] == meta("a") and meta("c") != meta("a")


def test_exclusions_reach_the_dataset():
    cfg = ToyDataConfig(count=60, seed=0, exclude=tuple(parse_combos("*:circle:*")))
    assert all(cfg.spec(i).shape != "circle" for i in range(60))


def test_cli_toy_data(tmp_path):
    from typer.testing import CliRunner

    from semgen_cli.cli.app import app

    out = tmp_path / "videos"
    result = CliRunner().invoke(app, ["toy-data", str(out), "--count", "2", "--seconds", "1", "--seed", "1", "--exclude-combos", "red:*:*"])
    assert result.exit_code == 0, result.output
    assert "semgen toy-data" in result.output and "next: semgen extract" in result.output
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 2
    again = CliRunner().invoke(app, ["toy-data", str(out), "--count", "1", "--seconds", "1", "--overwrite"])
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in out.iterdir()) == ["clip-000000.mp4", "metadata.jsonl", "toy_config.json"]


def test_cli_help():
    from typer.testing import CliRunner

    from semgen_cli.cli.app import app

    result = CliRunner().invoke(app, ["toy-data", "--help"])
    assert result.exit_code == 0 and "--exclude-combos" in result.output


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from semgen_cli.cli.app import main

    monkeypatch.setattr(sys, "argv", ["semgen", "toy-data", *args])
    monkeypatch.delenv("SEMGEN_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, msg",
    [
        (["--count", "0"], "--count"),
        (["--count", "-3"], "--count"),
        (["--seconds", "0"], "--seconds"),
        (["--seconds", "-1"], "--seconds"),
        (["--seconds", "0.01"], "no frames"),
        (["--fps", "0"], "--fps"),
        (["--size", "63"], "--size"),
        (["--size", "32"], "--size"),
        (["--long-fraction", "1.5"], "--long-fraction"),
        (["--long-seconds", "0"], "--long-seconds"),
        (["--crf", "60"], "--crf"),
        (["--exclude-combos", "red:circle"], "--exclude-combos"),
        (["--exclude-combos", "pink:*:*"], "--exclude-combos"),
        (["--exclude-combos", "*:*:*"], "excludes every"),
    ],
)
def test_cli_bad_flags_exit_2_with_one_line(tmp_path, monkeypatch, capsys, flags, msg):
    code, err = _main(monkeypatch, capsys, str(tmp_path / "out"), "--count", "1", *flags)
    assert code == 2
    assert msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_out_is_a_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "f").write_text("x")
    code, err = _main(monkeypatch, capsys, str(tmp_path / "f"), "--count", "1")
    assert code == 2 and "not a folder" in err


def test_cli_out_not_empty(tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, err = _main(monkeypatch, capsys, str(tmp_path), "--count", "1")
    assert code == 2 and "--overwrite" in err
    code, err = _main(monkeypatch, capsys, str(tmp_path), "--count", "1", "--overwrite")
    assert code == 2 and "did not write" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_library_errors_are_semgen_errors(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError):
        write_toy_dataset(tmp_path / "f", ToyDataConfig(count=1))
    with pytest.raises(ConfigError):
        ToyDataConfig(count=1, exclude=tuple(all_combos()))


def test_spec_for_caption_renders_what_the_caption_says():
    from semgen_cli.toy.judge import judge
    from semgen_cli.toy.world import render, spec_for_caption

    for i, text in enumerate(["a red circle moving right on a navy background", "a white triangle standing still on a brown background"]):
        spec = spec_for_caption(text, np.random.default_rng([999, i]), seconds=2, fps=8)
        assert spec.caption == text and spec.num_frames == 16
        assert judge(render(spec), text).passed
    with pytest.raises(ConfigError, match="toy grammar"):
        spec_for_caption("a dog", np.random.default_rng(0))

"""The toy judge: 100 % on rendered clips (raw and after an H.264 round trip), and the scores one
computes by hand on clips altered on purpose."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from semgen_cli.errors import ConfigError, InputError
from semgen_cli.toy.judge import ATTRIBUTES, JudgeConfig, judge, judge_video, segment_length
from semgen_cli.toy.world import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, ClipSpec, render


def spec(**kw) -> ClipSpec:
    base = dict(colour="red", shape="square", background="navy", motion="right", size=12, speed=2.0, x=20.0, y=30.0, seconds=2.0)
    base.update(kw)
    if base["motion"] == "still":
        base["speed"] = 0.0
    return ClipSpec(**base)


def covering_specs(seed: int, n_per_shape: int = 8) -> list[ClipSpec]:
    """Every colour, background, motion and size band for each shape, positions anywhere (so
    several straddle an edge)."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in SHAPES:
        for k in range(n_per_shape):
            motion = MOTIONS[(k + SHAPES.index(shape)) % len(MOTIONS)]
            out.append(
                spec(
                    colour=list(COLOURS)[k % 8], shape=shape, background=list(BACKGROUNDS)[(k + SHAPES.index(shape)) % 4],
                    motion=motion, size=10 + (3 * k + SHAPES.index(shape)) % 11, speed=round(float(rng.uniform(1, 3)), 2),
                    x=round(float(rng.uniform(0, 64)), 2), y=round(float(rng.uniform(0, 64)), 2), seconds=1.0,
                )  # fmt: skip
            )
    return out


def assert_perfect(result, s: ClipSpec) -> None:
    assert result.accuracy == dict.fromkeys(ATTRIBUTES, 1.0), (s, result.per_frame)
    assert result.passed and result.majority == s.attributes()
    assert result.drift == dict.fromkeys(ATTRIBUTES, 0.0)


# 1. Rendered clips score 100 % ------------------------------------------------------------------


@pytest.mark.parametrize("colour, background", list(itertools.product(COLOURS, BACKGROUNDS)))
def test_every_colour_on_every_background(colour, background):
    for shape, motion in zip(SHAPES, ("left", "up", "still"), strict=True):
        s = spec(colour=colour, background=background, shape=shape, motion=motion, seconds=0.5, x=3.3, y=61.7)
        assert_perfect(judge(render(s), s.caption), s)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", range(10, 21))
def test_every_shape_and_size(shape, size):
    s = spec(shape=shape, size=size, motion="down", speed=1.3, x=17.7, y=40.2, seconds=1.0)
    assert_perfect(judge(render(s), s.attributes()), s)


@pytest.mark.parametrize("motion", MOTIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_wrap_around_across_a_corner(motion, shape):
    # Starts straddling the top-left corner and laps the frame: the judge follows it across edges.
    s = spec(motion=motion, shape=shape, size=20, speed=2.9, x=0.4, y=0.7, seconds=4.0)
    assert_perfect(judge(render(s), s.caption), s)


def test_covering_set_raw():
    for s in covering_specs(0):
        assert_perfect(judge(render(s), s.caption), s)


@pytest.mark.parametrize("crf", [0, pytest.param(17, marks=pytest.mark.slow)])  # crf 0 in the fast tier
def test_covering_set_after_h264_round_trip(tmp_path, crf):
    from semgen_cli.io.video import read_video, write_video

    for i, s in enumerate(covering_specs(crf + 1)):
        path = write_video(tmp_path / f"{i}.mp4", render(s), fps=s.fps, crf=crf)
        assert_perfect(judge(read_video(path), s.caption), s)


def test_judge_video_on_a_toy_data_clip(tmp_path):
    from semgen_cli.toy.dataset import ToyDataConfig, write_toy_dataset

    cfg = ToyDataConfig(count=2, seconds=2.0, seed=11)
    write_toy_dataset(tmp_path / "toy", cfg)
    for i in range(2):
        s = cfg.spec(i)
        result = judge_video(tmp_path / "toy" / f"clip-{i:06d}.mp4", s.caption, chunk=5)
        assert_perfect(result, s)
        assert result.frames == 16 and result.segment == 2


# 2. Altered clips score what one computes by hand -----------------------------------------------


def test_colour_swapped_part_way():
    a = render(spec(colour="red"))  # 16 frames
    b = render(spec(colour="blue"))
    frames = np.concatenate([a[:10], b[10:]])
    r = judge(frames, spec(colour="red").caption)
    assert r.accuracy["colour"] == 10 / 16 and r.majority["colour"] == "red" and r.correct["colour"]
    assert r.per_frame["colour"] == ["red"] * 10 + ["blue"] * 6
    assert (r.first["colour"], r.last["colour"], r.drift["colour"]) == (1.0, 0.0, 1.0)
    assert r.accuracy["shape"] == r.accuracy["background"] == r.accuracy["motion"] == 1.0

    r = judge(np.concatenate([a[:6], b[6:]]), spec(colour="red").caption)
    assert r.accuracy["colour"] == 6 / 16 and r.majority["colour"] == "blue" and not r.correct["colour"] and not r.passed


def test_shape_replaced_at_the_end():
    frames = render(spec(shape="circle"))
    frames[12:] = render(spec(shape="triangle"))[12:]
    r = judge(frames, spec(shape="circle").caption)
    assert r.per_frame["shape"] == ["circle"] * 12 + ["triangle"] * 4
    assert r.accuracy["shape"] == 0.75 and r.correct["shape"]
    assert r.segment == 2 and r.drift["shape"] == 1.0


def test_direction_reversed():
    right = spec(motion="right", speed=2.0, x=20.0)
    a = render(right)[:10]  # frame 9 has its centre at x = 38
    b = render(spec(motion="left", speed=2.0, x=36.0))[:6]  # frames 10.. step back left from 38
    r = judge(np.concatenate([a, b]), right.caption)
    # Frame 9 averages one step right and one left: still. Frames 0-8 right, 10-15 left.
    assert r.per_frame["motion"] == ["right"] * 9 + ["still"] + ["left"] * 6
    assert r.accuracy["motion"] == 9 / 16 and r.correct["motion"]
    assert (r.first["motion"], r.last["motion"]) == (1.0, 0.0)


def test_wrong_background_and_missing_object():
    s = spec()
    frames = render(s)
    frames[12:] = np.array(BACKGROUNDS["navy"], dtype=np.uint8)  # object gone for the last 4 frames
    r = judge(frames, s.caption)
    assert r.accuracy["background"] == 1.0
    assert r.accuracy["colour"] == r.accuracy["shape"] == 0.75
    assert r.per_frame["colour"][12:] == [None] * 4
    # Motion: frame 11's steps are (10→11, 11→12), one of them is missing; frames 12-15 have none.
    assert r.per_frame["motion"] == ["right"] * 12 + [None] * 4

    gray = render(spec(background="gray"))
    r = judge(gray, s.caption)
    assert r.accuracy["background"] == 0.0 and r.majority["background"] == "gray" and r.accuracy["colour"] == 1.0


def test_still_clip_and_noise():
    s = spec(motion="still", shape="triangle", colour="cyan", background="brown")
    frames = render(s).astype(np.int16)
    noise = np.random.default_rng(0).integers(-6, 7, size=frames.shape)
    noisy = np.clip(frames + noise, 0, 255).astype(np.uint8)
    assert_perfect(judge(noisy, s.caption), s)


# 3. Segments, config and errors -----------------------------------------------------------------


@pytest.mark.parametrize("frames, seg", [(1, 1), (6, 1), (7, 1), (20, 3), (16, 2), (480, 72)])
def test_segment_is_floor_15_percent_at_least_one(frames, seg):
    assert segment_length(frames) == seg


def test_partial_expectations_and_to_dict():
    r = judge(render(spec()), {"colour": "red"})
    assert set(r.accuracy) == {"colour"} and r.to_dict()["passed"] is True
    assert "per_frame" in r.to_dict(per_frame=True)


@pytest.mark.parametrize(
    "expected, err",
    [
        ("a red blob moving left on a navy background", ConfigError),
        ({"texture": "smooth"}, ConfigError),
        ({"colour": "pink"}, ConfigError),
        ({"motion": "sideways"}, ConfigError),
    ],
)
def test_bad_expectations(expected, err):
    with pytest.raises(err):
        judge(render(spec(seconds=0.25)), expected)


def test_bad_frames_and_config(tmp_path):
    with pytest.raises(InputError, match="frames"):
        judge(np.zeros((64, 64, 3), dtype=np.uint8), {"colour": "red"})
    with pytest.raises(InputError, match="no frames"):
        judge(np.zeros((0, 64, 64, 3), dtype=np.uint8), {"colour": "red"})
    with pytest.raises(InputError):
        judge_video(tmp_path / "missing.mp4", "a red circle standing still on a navy background")
    with pytest.raises(ConfigError):
        JudgeConfig(colour_threshold=0)
    with pytest.raises(ConfigError):
        JudgeConfig(motion_window=0)

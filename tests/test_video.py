"""Video I/O: timestamp sampling, resize + crop, ffmpeg writing with metadata, both readers."""

from __future__ import annotations

import numpy as np
import pytest

from semgen_cli.errors import InputError
from semgen_cli.io import video as V
from tests.conftest import make_frames


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_round_trip_native(video_file, monkeypatch, backend):
    monkeypatch.setenv("SEMGEN_VIDEO_BACKEND", backend)
    path = video_file(n=16, fps=8)
    info = V.probe(path)
    assert (info.frames, info.fps, info.width, info.height) == (16, 8.0, 32, 32)
    frames = V.read_video(path)
    assert frames.shape == (16, 32, 32, 3) and frames.dtype == np.uint8
    # crf 0 yuv420p: chroma subsampling only, smooth gradients come back within a few levels
    assert np.abs(frames.astype(int) - make_frames(16).astype(int)).mean() < 4


def test_sample_indices_by_timestamp():
    # 8 fps source, 2 fps target: one frame every 0.5 s → every 4th frame
    assert V.sample_indices(16, 8.0, 2.0).tolist() == [0, 4, 8, 12]
    # 1.6 fps from 8 fps over 2 s: floor(3.2) = 3 frames at t = 0, .625, 1.25 → 0, 5, 10
    assert V.sample_indices(16, 8.0, 1.6).tolist() == [0, 5, 10]
    # max_seconds cuts to the first second
    assert V.sample_indices(16, 8.0, None, max_seconds=1.0).tolist() == list(range(8))
    # upsampling repeats frames
    assert V.sample_indices(4, 2.0, 4.0).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_read_at_fps_reads_only_requested(video_file, monkeypatch, backend):
    monkeypatch.setenv("SEMGEN_VIDEO_BACKEND", backend)
    path = video_file(n=16, fps=8)
    frames = V.read_video(path, fps=2.0)
    full = V.read_video(path)
    assert frames.shape[0] == 4
    np.testing.assert_array_equal(frames, full[[0, 4, 8, 12]])


def test_iter_video_chunks_equal_whole(video_file):
    path = video_file(n=20, fps=8)
    chunks = list(V.iter_video(path, chunk=6))
    assert [len(c) for c in chunks] == [6, 6, 6, 2]
    np.testing.assert_array_equal(np.concatenate(chunks), V.read_video(path))


def test_resize_center_crop_shapes_and_centre():
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 10:70] = 255  # white centre band, 60 px of 80
    out = V.resize_center_crop(frames, 20)
    assert out.shape == (2, 20, 20, 3)
    assert out.min() >= 250  # the centre crop lies inside the white band
    assert V.resize_center_crop(frames, (40, 80)) is frames


def test_metadata_round_trip(tmp_path):
    path = V.write_video(tmp_path / "m.mp4", make_frames(4), fps=4, metadata={"prompt": "a red circle", "seed": 3})
    assert V.read_metadata(path) == {"prompt": "a red circle", "seed": 3}
    assert not list(tmp_path.glob(".*partial*"))


def test_writer_failure_leaves_no_file(tmp_path):
    target = tmp_path / "x.mp4"
    with pytest.raises(RuntimeError):
        with V.VideoWriter(target, fps=4, width=32, height=32) as w:
            w.write(make_frames(2))
            raise RuntimeError("boom")
    assert not target.exists() and not list(tmp_path.iterdir())


def test_writer_rejects_odd_size_and_wrong_frames(tmp_path):
    with pytest.raises(InputError, match="even width"):
        V.VideoWriter(tmp_path / "o.mp4", fps=4, width=31, height=32)
    with pytest.raises(ValueError):
        with V.VideoWriter(tmp_path / "w.mp4", fps=4, width=32, height=32) as w:
            w.write(np.zeros((1, 16, 16, 3), np.uint8))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_probe_errors_name_the_file(tmp_path, monkeypatch, backend):
    monkeypatch.setenv("SEMGEN_VIDEO_BACKEND", backend)
    with pytest.raises(InputError, match="missing.mp4: no such file"):
        V.probe(tmp_path / "missing.mp4")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.mp4: file is empty"):
        V.probe(empty)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(InputError, match="junk.mp4"):
        V.probe(junk)


def test_list_videos(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.mp4", "b.MOV", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in V.list_videos(tmp_path)] == ["a/x.mp4", "b.MOV"]
    with pytest.raises(InputError, match="not a folder"):
        V.list_videos(tmp_path / "nope")

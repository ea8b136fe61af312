"""Video in and out.

In: decord (PyAV as fallback) reads only the frames asked for, sampled by timestamp at a target
fps, then resized and centre-cropped to a target size. Reading a 60 s clip at 1.6 fps holds 96
frames, never the whole clip.

Out: frames are streamed to the ffmpeg binary shipped by imageio-ffmpeg (driven with
ffmpeg-python) as raw RGB, encoded to H.264 yuv420p, with metadata; the mp4 appears under its
final name only when complete (written to a temp name, then renamed).
"""

from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from semgen_cli.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about its video stream."""

    path: str
    frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0


def _backend() -> str:
    forced = os.environ.get("SEMGEN_VIDEO_BACKEND")
    if forced in ("decord", "pyav"):
        return forced
    try:
        import decord  # noqa: F401

        return "decord"
    except ImportError:
        return "pyav"


def probe(path: str | os.PathLike) -> VideoInfo:
    """Frame count, fps and size; `InputError` naming the file if it cannot be read."""
    path = str(path)
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, not a video file; name the video files (e.g. {path.rstrip('/')}/*.mp4)")
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file" if not os.path.exists(path) else f"{path}: not a regular file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: file is empty")
    try:
        if _backend() == "decord":
            import decord

            vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
            info = VideoInfo(path, len(vr), float(vr.get_avg_fps()), *reversed(vr[0].shape[:2]))
        else:
            info = _probe_pyav(path)
    except InputError:
        raise
    except Exception as err:  # decord raises DECORDError, PyAV raises av.error.*
        raise InputError(f"{path}: not a readable video ({_short(err)})") from None
    if info.frames <= 0 or info.fps <= 0:
        raise InputError(f"{path}: video has no frames")
    return info


def _probe_pyav(path: str) -> VideoInfo:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise InputError(f"{path}: no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frames = stream.frames
        if not frames:  # container did not record it: count by decoding
            frames = sum(1 for _ in container.decode(stream))
        return VideoInfo(path, int(frames), fps, stream.codec_context.width, stream.codec_context.height)


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:160]


def sample_indices(num_frames: int, src_fps: float, fps: float | None, max_seconds: float | None = None) -> np.ndarray:
    """Source frame indices for sampling at `fps` by timestamp: frame k is the one shown at k/fps.

    `fps=None` keeps every frame. `max_seconds` cuts the clip to its first seconds.
    """
    duration = num_frames / src_fps
    if max_seconds is not None:
        duration = min(duration, max_seconds)
    if fps is None:
        count = min(num_frames, int(math.floor(duration * src_fps + 1e-6)))
        return np.arange(count, dtype=np.int64)
    count = max(1, int(math.floor(duration * fps + 1e-6)))
    times = np.arange(count, dtype=np.float64) / fps  # (F,) seconds
    return np.minimum(np.floor(times * src_fps + 1e-6).astype(np.int64), num_frames - 1)


def read_video(
    path: str | os.PathLike,
    fps: float | None = None,
    size: int | Sequence[int] | None = None,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Frames `(F, H, W, 3)` uint8 sampled at `fps` (None: native) and resized + centre-cropped
    to `size` (int: square, (H, W), None: native)."""
    info = probe(path)
    idx = sample_indices(info.frames, info.fps, fps, max_seconds)
    frames = _read_indices(str(path), idx)
    return resize_center_crop(frames, size) if size is not None else frames


def iter_video(
    path: str | os.PathLike,
    fps: float | None = None,
    size: int | Sequence[int] | None = None,
    chunk: int = 64,
    max_seconds: float | None = None,
) -> Iterator[np.ndarray]:
    """Like `read_video` but yields chunks of at most `chunk` frames, so memory stays flat."""
    info = probe(path)
    idx = sample_indices(info.frames, info.fps, fps, max_seconds)
    for start in range(0, len(idx), chunk):
        frames = _read_indices(str(path), idx[start : start + chunk])
        yield resize_center_crop(frames, size) if size is not None else frames


def _read_indices(path: str, idx: np.ndarray) -> np.ndarray:
    try:
        if _backend() == "decord":
            import decord

            try:
                vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
                return vr.get_batch(idx.tolist()).asnumpy()
            except decord.DECORDError:
                pass  # decord fails on some frame widths (e.g. 16, 48): PyAV reads them
        return _read_pyav(path, idx)
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"{path}: could not decode frames ({_short(err)})") from None


def _read_pyav(path: str, idx: np.ndarray) -> np.ndarray:
    import av

    wanted: dict[int, list[int]] = {}
    for pos, i in enumerate(idx.tolist()):
        wanted.setdefault(i, []).append(pos)
    out: list[np.ndarray | None] = [None] * len(idx)
    last = int(idx.max()) if len(idx) else -1
    with av.open(path) as container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                arr = frame.to_ndarray(format="rgb24")
                for pos in wanted[i]:
                    out[pos] = arr
            if i >= last:
                break
    missing = [p for p, a in enumerate(out) if a is None]
    if missing:  # container over-reported its frame count: repeat the last decoded frame
        have = [a for a in out if a is not None]
        if not have:
            raise InputError(f"{path}: no frames could be decoded")
        for p in missing:
            out[p] = next(a for a in reversed(out[:p]) if a is not None) if p else have[0]
    return np.stack(out)  # type: ignore[arg-type]


def resize_center_crop(frames: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Resize `(F, H, W, 3)` uint8 so the target fits inside, keeping aspect, then centre crop."""
    th, tw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    f, h, w, _ = frames.shape
    if (h, w) == (th, tw):
        return frames
    import torch
    import torch.nn.functional as F

    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (F, 3, H, W)
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - th) // 2, (nw - tw) // 2
    x = x[:, :, top : top + th, left : left + tw]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


class VideoWriter:
    """Stream RGB frames into an H.264 mp4 through ffmpeg.

    >>> with VideoWriter("out.mp4", fps=8, width=64, height=64, metadata={"prompt": "..."}) as w:
    ...     w.write(frames)  # (F, H, W, 3) uint8, any number of calls

    The file is written under a temp name and renamed on a clean exit, so a crash never leaves a
    truncated mp4 under the final name. `metadata` goes into the mp4 `comment` tag as JSON.
    `pix_fmt` yuv420p plays everywhere; yuv444p with crf 0 keeps colours exact at object edges
    too (chroma is not subsampled), which the toy world's training data wants.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        width: int,
        height: int,
        metadata: dict | None = None,
        crf: int = 17,
        preset: str = "medium",
        pix_fmt: str = "yuv420p",
    ) -> None:
        if pix_fmt not in ("yuv420p", "yuv444p"):
            raise ValueError(f"pix_fmt must be yuv420p or yuv444p, got {pix_fmt!r}")
        if pix_fmt == "yuv420p" and (width % 2 or height % 2):
            raise InputError(f"{path}: H.264 yuv420p needs even width and height, got {width}x{height}")
        self.path = Path(path)
        self.fps, self.width, self.height = fps, width, height
        self.metadata = metadata or {}
        self.crf, self.preset, self.pix_fmt = crf, preset, pix_fmt
        self.frames_written = 0
        self._proc = None
        # unique per process and writer: two writers of one name never share a temp file
        self._tmp = self.path.with_name(f".{self.path.stem}.partial-{os.getpid()}-{os.urandom(3).hex()}{self.path.suffix or '.mp4'}")

    def __enter__(self) -> "VideoWriter":
        import ffmpeg

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"{self.path}: cannot create its folder {self.path.parent} ({e.strerror})") from None
        out_kwargs = {
            "vcodec": "libx264",
            "pix_fmt": self.pix_fmt,
            "crf": self.crf,
            "preset": self.preset,
            "r": self.fps,
            "movflags": "+faststart",
            "format": "mp4",
        }
        meta = [f"comment={json.dumps(self.metadata, sort_keys=True)}"] if self.metadata else []
        if "prompt" in self.metadata:
            meta.append(f"title={self.metadata['prompt']}")
        stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{self.width}x{self.height}", r=self.fps)
        stream = ffmpeg.output(stream, str(self._tmp), **out_kwargs, **{f"metadata:g:{i}": m for i, m in enumerate(meta)})
        self._proc = ffmpeg.run_async(
            stream, cmd=ffmpeg_exe(), pipe_stdin=True, pipe_stderr=True, overwrite_output=True, quiet=False
        )
        return self

    def write(self, frames: np.ndarray) -> None:
        """Append `(F, H, W, 3)` or `(H, W, 3)` uint8 frames."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"expected (F, {self.height}, {self.width}, 3) uint8, got {frames.shape} {frames.dtype}")
        assert self._proc is not None, "use VideoWriter as a context manager"
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        except BrokenPipeError:  # ffmpeg stopped (it could not write): __exit__ says why
            self._broken = True
            raise
        self.frames_written += len(frames)

    def _failure(self, err: bytes, code: int) -> str:
        """One line on why ffmpeg failed: a full disk said as such, else the OS error ffmpeg
        reports (its last line is only "Conversion failed!") or the signal that stopped it."""
        if code < 0:
            return f"{self.path}: ffmpeg could not write it (stopped by {signal.Signals(-code).name})"
        if "No space left on device" in err.decode(errors="replace"):
            return f"{self.path}: the disk is full (ffmpeg: No space left on device); free space or write elsewhere"
        return f"{self.path}: ffmpeg could not write it ({_ffmpeg_reason(err)})"

    def __exit__(self, exc_type, exc, tb) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        err = proc.stderr.read()
        code = proc.wait()
        if exc_type is not None or code != 0:
            self._tmp.unlink(missing_ok=True)
            if exc_type is None or (code != 0 and getattr(self, "_broken", False)):
                raise InputError(self._failure(err, code)) from None
            return
        try:
            os.replace(self._tmp, self.path)
        except OSError as e:
            self._tmp.unlink(missing_ok=True)
            raise InputError(f"{self.path}: cannot write ({e.strerror})") from None


def _ffmpeg_reason(stderr: bytes) -> str:
    """The line of ffmpeg's log that says why it failed: an OS error where there is one (its
    last line is only "Conversion failed!"), else the last line."""
    lines = [l.strip() for l in stderr.decode(errors="replace").splitlines() if l.strip()]
    for cause in ("No space left", "Read-only file system", "Permission denied", "File too large", "Disk quota", "No such file"):
        for line in lines:
            if cause in line:
                return line[-200:]
    return lines[-1][-200:] if lines else "no message"


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, metadata: dict | None = None, crf: int = 17, pix_fmt: str = "yuv420p") -> Path:
    """Write `(F, H, W, 3)` uint8 frames to an mp4 in one call."""
    _, h, w, _ = frames.shape
    with VideoWriter(path, fps=fps, width=w, height=h, metadata=metadata, crf=crf, pix_fmt=pix_fmt) as writer:
        writer.write(frames)
    return Path(path)


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON that `VideoWriter` stored in the mp4 `comment` tag ({} if none)."""
    import av

    with av.open(str(path)) as container:
        comment = container.metadata.get("comment")
    try:
        return json.loads(comment) if comment else {}
    except json.JSONDecodeError:
        return {}


def list_videos(folder: str | os.PathLike) -> list[Path]:
    """Video files under `folder` (recursive), sorted; `InputError` if the folder is missing."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder of videos")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)

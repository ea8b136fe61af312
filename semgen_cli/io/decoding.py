"""Decoding videos for `semgen extract` in worker processes, a few videos ahead of the encoders.

Each video is read twice, as the paper's two encoders see it (§3.1 and the implementation
details): at the VAE's frame rate and size, and at the semantic encoder's (1.6 fps by default).
Workers are spawned processes that end with the extracting process, even when it is killed.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Iterator

from semgen_cli.errors import InputError
from semgen_cli.io.video import probe, read_video


def decode(path: str, fps: float, size, semantic_fps: float, semantic_size, max_seconds) -> dict:
    """Probe `path` and read both frame streams -> {"info", "frames", "semantic_frames"}, or
    {"error": one line} for a file that cannot be used (it runs in a worker: errors come back)."""
    try:
        info = probe(path)
        vae_frames = read_video(path, fps=fps, size=size, max_seconds=max_seconds)
        sem_frames = read_video(path, fps=semantic_fps, size=semantic_size, max_seconds=max_seconds)
        return {"info": info, "frames": vae_frames, "semantic_frames": sem_frames}
    except InputError as err:
        return {"error": str(err)}
    except Exception as err:  # anything a broken file can make a decoder raise
        return {"error": f"{path}: {type(err).__name__}: {err}"}


class Decoder:
    """Decodes videos in worker processes, a few ahead of the encoders (inline with 0 workers).

    `cfg` is an ``ExtractConfig`` or anything with its decoding settings: num_workers, fps, size,
    semantic_fps, semantic_size, max_seconds."""

    def __init__(self, cfg) -> None:
        self.num_workers = cfg.num_workers
        self.args = (cfg.fps, cfg.size, cfg.semantic_fps, cfg.semantic_size, cfg.max_seconds)
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "Decoder":
        if self.num_workers > 0:
            import multiprocessing as mp

            self.pool = ProcessPoolExecutor(self.num_workers, mp_context=mp.get_context("spawn"),
                                            initializer=_die_with_parent, initargs=(os.getpid(),))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def map(self, paths: list[Path]) -> Iterator[dict]:
        """:func:`decode` of each path, in order."""
        if self.pool is None:
            for p in paths:
                yield decode(str(p), *self.args)
            return
        ahead = 2 * self.num_workers
        futures: list[Future] = []
        it = iter(paths)
        for p in it:
            futures.append(self.pool.submit(decode, str(p), *self.args))
            if len(futures) >= ahead:
                break
        while futures:
            result = futures.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                futures.append(self.pool.submit(decode, str(nxt), *self.args))
            yield result


def _die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when the extracting process dies, even by `kill -9`
    (Linux: PR_SET_PDEATHSIG; elsewhere a thread that watches the parent's pid)."""
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()

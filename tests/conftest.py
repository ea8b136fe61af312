"""Shared fixtures: tiny videos written on the fly, a CLI runner that goes through `main()`
(so errors become exit code 2 exactly as users see them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def make_frames(n: int = 16, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth moving gradient frames (compress well, survive H.264 closely)."""
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        r = (x * 255 / w + i * 8) % 256
        g = (y * 255 / h) % 256
        b = np.full_like(r, (seed * 40 + i * 4) % 256)
        out.append(np.stack([r, g, b], -1))
    return np.asarray(out, dtype=np.uint8)


@pytest.fixture
def video_file(tmp_path: Path):
    """Factory: write an mp4 of `n` frames at `fps` and return its path."""
    from semgen_cli.io.video import write_video

    def _make(name: str = "v.mp4", n: int = 16, fps: float = 8, h: int = 32, w: int = 32, seed: int = 0) -> Path:
        path = tmp_path / name
        write_video(path, make_frames(n, h, w, seed), fps=fps, crf=0)
        return path

    return _make


def run_cli(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `semgen ARGS` in a subprocess, as a user would."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "semgen_cli.cli.app", *args], capture_output=True, text=True, cwd=cwd, env=full_env
    )


@pytest.fixture
def cli():
    return run_cli


def run_inproc(*args: str) -> subprocess.CompletedProcess:
    """Run `semgen ARGS` inside this process (much faster than a subprocess: torch, diffusers
    and transformers are imported once). Same exit codes and output as the console script."""
    import contextlib
    import io

    from semgen_cli.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["semgen", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(["semgen", *args], code, out.getvalue(), err.getvalue())


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(path: str):
    """The script examples/PATH (e.g. "toy/train_vae.py") as a module, the one way tests load the
    example scripts. It is registered in sys.modules under its file name, as Python does for a
    script's sibling imports: a script that imports a sibling (train_ssl_encoder.py imports
    train_semantic_encoder) gets the sibling loaded the same way first."""
    import importlib.util

    file = EXAMPLES / path
    if not file.is_file():
        raise FileNotFoundError(f"examples/{path}: no such script")
    name = file.stem
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as err:
        sibling = file.with_name(f"{err.name}.py")
        if not sibling.is_file() or err.name in sys.modules:
            del sys.modules[name]
            raise
        load_example(str(sibling.relative_to(EXAMPLES)))
        spec.loader.exec_module(module)
    return module


def tiny_data(root: Path, count: int, compressor_steps: int, batch: int) -> Path:
    """`root/data`: `count` toy clips of 4 s (seed 5) extracted at 8 fps with the tiny components,
    and `root/comp`, a compressor fitted on them, all through the CLI in this process."""
    assert run_inproc("toy-data", str(root / "videos"), "--count", str(count), "--seconds", "4", "--seed", "5").returncode == 0
    r = run_inproc("extract", str(root / "videos"), "--out", str(root / "data"), "--fps", "8", "--num-workers", "0")
    assert r.returncode == 0, r.stderr
    r = run_inproc("fit-compressor", str(root / "data"), "--out", str(root / "comp"), "--steps", str(compressor_steps),
                   "--batch-size", str(batch))
    assert r.returncode == 0, r.stderr
    return root / "data"


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Tiny runs built through the library: toy-data → extract → fit-compressor → train-latent → train-semantic."""
    from semgen_cli.steps.extract import ExtractConfig, extract
    from semgen_cli.steps.fit_compressor import FitCompressorConfig, fit_compressor
    from semgen_cli.steps.train_latent import TrainLatentConfig, train_latent
    from semgen_cli.steps.train_semantic import TrainSemanticConfig, train_semantic
    from semgen_cli.toy.dataset import ToyDataConfig, write_toy_dataset
    from semgen_cli.training import TrainConfig

    root = tmp_path_factory.mktemp("generate-runs")
    write_toy_dataset(root / "videos", ToyDataConfig(count=4, seconds=4, seed=3))
    extract(ExtractConfig(str(root / "videos"), out=str(root / "data"), fps=8, num_workers=0))
    fit_compressor(FitCompressorConfig(str(root / "data"), out=str(root / "comp")), TrainConfig(steps=5, batch_size=2))
    train_latent(TrainLatentConfig(str(root / "data"), out=str(root / "lat"), compressor=str(root / "comp"), preset="tiny"), TrainConfig(steps=2, batch_size=2))
    train_semantic(TrainSemanticConfig(str(root / "data"), latent_run=str(root / "lat"), out=str(root / "sem"), preset="tiny"), TrainConfig(steps=2, batch_size=2))
    return root

"""The trainable steps under plain DDP (torchrun, 2 ranks, gloo): every trainable parameter gets a
gradient in every step, or DDP stops at the second step ("Expected to have finished reduction")."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import tiny_data


def _torchrun(*args, port: int) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun ships with torch"
    cmd = [torchrun, "--nproc_per_node=2", f"--master_port={port}", "-m", "semgen_cli.cli.app", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_train_latent_and_semantic_under_plain_ddp(tmp_path):
    data = tiny_data(tmp_path, count=4, compressor_steps=5, batch=4)
    lat = tmp_path / "lat"
    # The compressor trains jointly; its decoder (fit-compressor's) gets no stage-1 gradient and is frozen.
    r = _torchrun("train-latent", data, "--compressor", tmp_path / "comp", "--preset", "tiny", "--batch-size", "4",
                  "--steps", "2", "--grad-accum", "2", "--out", lat, port=29541)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _torchrun("train-semantic", data, "--latent-run", lat, "--preset", "tiny", "--batch-size", "4", "--steps", "2",
                  "--out", tmp_path / "sem", port=29542)
    assert r.returncode == 0, r.stderr[-2000:]

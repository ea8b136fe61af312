"""`semgen generate` on several ranks (semgen_cli/parallel): the plan, and each mode against one
process under `torchrun --nproc_per_node=2` with gloo on the CPU."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semgen_cli.errors import ConfigError
from semgen_cli.models.attention import window_ids
from semgen_cli.parallel import choose
from semgen_cli.parallel.window import layout, plain_windows, rank_frames

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("parallel_model_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(n: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", f"--master_port={free_port()}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


# ----------------------------------------------------------------------------- the plan (no processes)


def test_auto_picks_prompts_then_windows_then_guidance():
    assert choose("auto", 1, 0, 5, True, 10).mode == "none"
    assert choose("auto", 2, 0, 3, True, 10).mode == "prompt"
    two = choose("auto", 2, 0, 1, True, 10)
    assert (two.mode, two.window, two.guidance) == ("window", 2, 1)
    assert two.describe().startswith("2 ranks: window-parallel stage 1")
    assert choose("auto", 2, 0, 1, True, 1).mode == "guidance"  # one window (full attention or short): CFG pair
    eight = choose("auto", 8, 0, 1, True, 4)
    assert (eight.mode, eight.guidance, eight.window) == ("guidance+window", 2, 4)
    assert choose("auto", 2, 0, 1, False, 1).mode == "none"  # no CFG, one window: nothing to split


@pytest.mark.parametrize("mode,world,prompts,cfg,windows,needle", [
    ("bogus", 2, 1, True, 4, "--parallel must be one of"),
    ("prompt", 2, 1, True, 4, "--parallel prompt needs several prompts"),
    ("guidance", 2, 1, False, 4, "CFG is off in stage 1"),
    ("guidance", 4, 1, True, 4, "--parallel guidance takes 2 ranks"),
    ("window", 3, 1, True, 2, "too few for 3 window ranks"),
    ("guidance+window", 3, 1, True, 4, "do not split into 2 guidance"),
])
def test_modes_that_cannot_use_the_ranks_are_refused(mode, world, prompts, cfg, windows, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        choose(mode, world, 0, prompts, cfg, windows)
    assert "\n" not in str(err.value)


def test_prompts_go_round_the_ranks_and_only_rank0_writes_a_shared_video():
    ranks = [choose("prompt", 2, r, 3, True, 4) for r in range(2)]
    assert [i for i in range(3) if ranks[0].takes(i)] == [0, 2] and [i for i in range(3) if ranks[1].takes(i)] == [1]
    assert all(p.writes for p in ranks)
    window = [choose("window", 2, r, 1, True, 4) for r in range(2)]
    assert all(p.takes(0) for p in window) and [p.writes for p in window] == [True, False]


@pytest.mark.parametrize("frames,window,ranks", [(16, 4, 2), (18, 4, 2), (13, 4, 3), (41, 4, 2), (22, 4, 3), (20, 6, 2)])
def test_rank_borders_are_plain_window_borders_of_one_process(frames, window, ranks):
    """Each rank holds whole windows of the single-process assignment (the last sliver joined, no wrap)."""
    ids = window_ids(torch.arange(frames), frames, window, 0)
    bounds = rank_frames(frames, window, ranks)
    assert bounds[0][0] == 0 and bounds[-1][1] == frames
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    for lo, hi in bounds:
        inside, outside = set(ids[lo:hi].tolist()), set(ids[:lo].tolist()) | set(ids[hi:].tolist())
        assert not inside & outside
    assert plain_windows(frames, window) == int(ids[-1]) + 1


def test_halos_are_the_straddling_shifted_window():
    """2 ranks at 16 frames, T_w 4: the shifted window [6, 10) straddles; each rank sends its half of it."""
    slots = torch.arange(16).repeat_interleave(4)  # 4 video tokens per frame
    lay0, lay1 = (layout(slots, 16, 4, (64,), r, 2) for r in range(2))
    assert lay0.n_left == 0 and lay0.n_right == 2 * 4 and lay1.n_left == 2 * 4 and lay1.n_right == 0
    assert slots[lay0.ext[lay0.order[-lay0.n_right:]]].tolist() == [8] * 4 + [9] * 4
    assert slots[lay0.local[lay0.send_right]].tolist() == [6] * 4 + [7] * 4  # its half of window [6, 10)
    assert slots[lay1.local[lay1.send_left]].tolist() == [8] * 4 + [9] * 4
    assert len(lay0.send_left) == 0 and len(lay1.send_right) == 0 and lay0.video_counts == [32, 32]


def test_too_many_window_ranks_for_the_length_is_a_value_error():
    with pytest.raises(ValueError, match="at most 2 window ranks"):
        rank_frames(9, 4, 3)


# ----------------------------------------------------------------------------- model level, under torchrun


@pytest.mark.slow  # torchrun starts 3 Python processes that import torch: ~10-30 s on a shared CPU
@pytest.mark.parametrize("mode", ["window", "guidance"])
def test_two_ranks_equal_one_process_at_model_level(mode):
    """A tiny swin DiT (random weights, semantic tokens, several lengths): one forward and a 3-step
    CFG Euler sample through the parallel wrappers equal one process's within 1e-5."""
    res = torchrun(2, str(WORKER), mode)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert f"rank 0: {mode} OK" in res.stdout and f"rank 1: {mode} OK" in res.stdout


@pytest.mark.slow
def test_four_ranks_guidance_times_window_at_model_level():
    res = torchrun(4, str(WORKER), "guidance+window")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert all(f"rank {r}: guidance+window OK" in res.stdout for r in range(4))


@pytest.mark.slow
def test_a_load_failure_on_one_rank_ends_every_rank_with_its_line():
    res = torchrun(2, str(WORKER), "agree")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    for r in range(2):
        assert f"rank {r} raised InputError shared=True: --latent-run runs/x: model.safetensors is truncated; retrain it" in res.stdout


# ----------------------------------------------------------------------------- through `semgen generate`

PROMPT = "a purple triangle moving right on a brown background"


def frames_of(path: Path):
    import av
    import numpy as np

    with av.open(str(path)) as f:
        return np.stack([fr.to_ndarray(format="rgb24").astype(int) for fr in f.decode(video=0)])


def semgen_argv() -> list[str]:
    return ["-m", "semgen_cli.cli.app"]


def test_an_unknown_parallel_mode_is_one_line_and_writes_nothing(tmp_path):
    from conftest import run_inproc

    res = run_inproc("generate", PROMPT, "--seconds", "2", "--parallel", "ranks", "--out", str(tmp_path / "a.mp4"))
    assert res.returncode == 2 and "--parallel must be one of auto, none, prompt" in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.strip()]) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_mode_the_length_cannot_use_is_said_once_by_rank0(tmp_path):
    res = torchrun(2, *semgen_argv(), "generate", PROMPT, "--seconds", "1", "--parallel", "window", "--out", str(tmp_path / "a.mp4"))
    assert res.returncode != 0
    ours = [line for line in (res.stdout + res.stderr).splitlines() if "--parallel window: stage 1 has 1 shifted-attention window" in line]
    assert len(ours) == 1, res.stdout[-2000:] + res.stderr[-3000:]
    assert not list(tmp_path.glob("*.mp4"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["window", "guidance"])
def test_two_ranks_make_the_video_of_one_process(tmp_path, mode):
    """The bundled default, 4 s, 4 steps per stage: the plan within 1e-4 and the frames within 2 levels
    (window: bit for bit on the CPU)."""
    from conftest import run_inproc
    from safetensors.torch import load_file

    common = ["--seconds", "4", "--steps", "4", "--seed", "11", "--save-semantics"]
    assert run_inproc("generate", PROMPT, *common, "--out", str(tmp_path / "one.mp4")).returncode == 0
    res = torchrun(2, *semgen_argv(), "generate", PROMPT, *common, "--parallel", mode, "--out", str(tmp_path / "two.mp4"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "2 ranks: " + ("window-parallel stage 1" if mode == "window" else "guidance-parallel") in " ".join(res.stdout.split())
    a, b = (load_file(tmp_path / f"{n}.semantic.safetensors")["semantic"] for n in ("one", "two"))
    assert float((a - b).abs().max()) <= 1e-4
    x, y = frames_of(tmp_path / "one.mp4"), frames_of(tmp_path / "two.mp4")
    assert x.shape == y.shape and int(abs(x - y).max()) <= (0 if mode == "window" else 2)
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.slow
def test_prompts_spread_over_ranks_are_the_videos_of_one_process(tmp_path):
    from conftest import run_inproc

    (tmp_path / "p.txt").write_text(f"{PROMPT}\na white circle standing still on a navy background\na cyan square moving up on a black background\n")
    common = ["--prompts-file", str(tmp_path / "p.txt"), "--seconds", "2", "--steps", "3", "--seed", "3"]
    assert run_inproc("generate", *common, "--out", str(tmp_path / "one" / "v.mp4")).returncode == 0
    res = torchrun(2, *semgen_argv(), "generate", *common, "--out", str(tmp_path / "two" / "v.mp4"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "2 ranks: prompt-parallel" in " ".join(res.stdout.split())
    for i in range(3):
        x, y = frames_of(tmp_path / "one" / f"v-{i:03d}.mp4"), frames_of(tmp_path / "two" / f"v-{i:03d}.mp4")
        assert x.shape == y.shape and int(abs(x - y).max()) == 0
    assert sorted(p.name for p in (tmp_path / "two").glob("*.json")) == [f"v-{i:03d}.json" for i in range(3)]


@pytest.mark.slow
def test_toy_eval_spreads_its_prompts_and_scores_the_same(tmp_path):
    """`toy-eval` under torchrun: the ranks make the prompts in turn, rank 0 judges them all and
    prints the one JSON report, the same as one process's."""
    import json

    from conftest import run_inproc

    args = ["toy-eval", "--count", "3", "--seconds", "2", "--steps", "2", "--json"]
    one = run_inproc(*args)
    assert one.returncode == 0, one.stderr
    two = torchrun(2, *semgen_argv(), *args)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert [r["prompt"] for r in a["videos"]] == [r["prompt"] for r in b["videos"]]
    assert a["summary"] == b["summary"]


@pytest.mark.slow
def test_a_rank_that_dies_mid_video_leaves_no_mp4(tmp_path):
    """Rank 1 crashes (SIGKILL) while rank 0 decodes: torchrun ends rank 0 (SIGTERM), and neither
    the mp4 nor a temporary file is left (the video only ever appears complete, under its final name)."""
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", *semgen_argv(), "generate",
           PROMPT, "--seconds", "30", "--steps", "2", "--decode-chunk", "1", "--parallel", "window", "--out", str(tmp_path / "two.mp4")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.time() + 300
    def unfinished():  # the writer's partial file and the commit's temp names
        return [p.name for p in tmp_path.iterdir() if "partial" in p.name or ".tmp-" in p.name]

    while not unfinished() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    ranks = {}
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and int(open(f"/proc/{pid}/stat").read().split()[3]) == proc.pid:
                env_of = dict(kv.split("=", 1) for kv in open(f"/proc/{pid}/environ").read().split("\0") if "=" in kv)
                ranks[env_of.get("RANK")] = int(pid)
        except OSError:
            pass
    assert "1" in ranks, f"rank 1 not found among torchrun's children (returncode {proc.poll()})"
    os.kill(ranks["1"], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert not (tmp_path / "two.mp4").exists() and not unfinished(), sorted(p.name for p in tmp_path.iterdir())


def test_plain_window_count_is_window_ids_without_a_tensor_of_the_length():
    """`plan_for` counts windows before the memory check: it must not allocate the length."""
    for window in (2, 3, 4, 6):
        for frames in range(1, 40):
            want = 1 if frames <= window else int(window_ids(torch.arange(frames), frames, window, 0)[-1]) + 1
            assert plain_windows(frames, window) == want
    assert plain_windows(10**12, 4) == 250_000_000_000

"""Hardening of inputs and outputs: every clip keeps its own id, input from others is data (captions,
symlinks, --config, metadata.jsonl), numbers are checked before work starts, and generate's outputs
are committed together with one-line errors when they cannot be written."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from semgen_cli.errors import InputError, MismatchError
from semgen_cli.io import captions as C
from semgen_cli.io.shards import Dataset
from semgen_cli.io.video import write_video
from semgen_cli.steps.extract import ExtractConfig, extract, sample_id
from tests.conftest import make_frames, run_inproc

PROMPT = "a red circle moving left on a black background"


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2, no traceback, exactly one line on stderr, naming each of `words`."""
    assert r.returncode == 2, (r.returncode, r.stdout[-800:], r.stderr[-800:])
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) and its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def xcfg(videos: Path, out: Path, **kw) -> ExtractConfig:
    base = dict(videos=str(videos), out=str(out), fps=8, semantic_fps=2.0, shard_size=4, num_workers=0, dtype="float32")
    return ExtractConfig(**{**base, **kw})


def write_clips(folder: Path, names: list[str], captions: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_video(folder / name, make_frames(9, 32, 32, seed=i), fps=8, crf=0)
    captions = {n: f"caption of {n}" for n in names} if captions is None else captions
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "text": t}) + "\n" for n, t in captions.items()))
    return folder


# ----------------------------------------------------------------------------- part 3: ids


def test_sample_ids_are_unique_per_source_path():
    names = ["same.mp4", "same.mov", "a/b.mp4", "a__b.mp4", "a%2Fb.mp4"]
    ids = [sample_id(n) for n in names]
    assert len(set(ids)) == len(ids) and not any("/" in i for i in ids)
    assert sample_id("clip-00.mp4") == "clip-00.mp4"
    # the legacy scheme is the one that collided
    assert sample_id("same.mp4", "legacy") == sample_id("same.mov", "legacy")


def test_same_stem_and_flattened_paths_keep_their_own_tensors_and_captions(tmp_path):
    """same.mp4 + same.mov and a/b.mp4 + a__b.mp4 in one shard: four samples, four tensor sets,
    each caption with its own clip; a caption's escape sequences reach `inspect` escaped."""
    from safetensors import safe_open

    names = ["a/b.mp4", "a__b.mp4", "same.mov", "same.mp4"]
    caps = {n: f"caption of {n}" for n in names}
    caps["same.mov"] = "two\x1b[2J\x1b]0;pwned\x07 end"
    videos = write_clips(tmp_path / "videos", names, caps)
    data = tmp_path / "data"
    result = extract(xcfg(videos, data))
    assert (result.samples, result.failed) == (4, 0)
    ds = Dataset(data)
    ids = [r["id"] for r in ds.records]
    with safe_open(str(data / "shard-00000.safetensors"), "pt") as f:
        keys = {k.rsplit("/", 1)[0] for k in f.keys()}
    assert len(set(ids)) == 4 and set(ids) == keys and len(ds) == 4
    assert {r["source"]: r["caption"] for r in ds.records} == caps
    latents = [ds.load(i)["latents"] for i in range(4)]
    assert all(not latents[i].equal(latents[j]) for i in range(4) for j in range(i))  # four clips, four tensors

    r = run_inproc("inspect", data)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout and "\\x1b[2J" in r.stdout

    # a shard whose records name one id twice (what the old ids made) is refused by readers and by the index
    shard = data / "shard-00000.jsonl"
    recs = [json.loads(l) for l in shard.read_text().splitlines()]
    recs[1]["id"] = recs[0]["id"]
    shard.write_text("".join(json.dumps(x) + "\n" for x in recs))
    with pytest.raises(InputError, match=r"share the sample id .*extract the videos again"):
        _ = Dataset(data).records
    (data / "index.json").unlink()
    before = snapshot(data)
    r = run_inproc("extract", videos, "--out", data, "--fps", "8", "--semantic-fps", "2", "--shard-size", "4", "--num-workers", "0", "--dtype", "float32")
    one_line_error(r, "shard-00000.jsonl", "new --out")
    assert snapshot(data) == before


def test_resume_of_a_folder_with_legacy_ids(tmp_path):
    """A folder an older semgen started (no id scheme in its progress marker) resumes with its own
    ids when they are unique, and is refused in one line when two sources would share one."""
    videos = write_clips(tmp_path / "videos", ["x.mp4", "y.mp4"])
    data = tmp_path / "data"
    extract(xcfg(videos, data, shard_size=1))
    marker = data / ".progress" / "config.json"
    legacy = {k: v for k, v in json.loads(marker.read_text()).items() if k != "ids"}
    marker.write_text(json.dumps(legacy))
    (data / "index.json").unlink()
    again = extract(xcfg(videos, data, shard_size=1))
    assert (again.shards_kept, again.shards_written, again.samples) == (2, 0, 2)
    assert "ids" not in json.loads((data / "index.json").read_text())["producer"]

    write_video(videos / "x.mov", make_frames(9, 32, 32, seed=5), fps=8, crf=0)
    (data / "index.json").unlink()
    before = snapshot(data)
    with pytest.raises(MismatchError, match=r"older semgen .* x\.mov and x\.mp4 would share the id 'x'; extract into a new --out"):
        extract(xcfg(videos, data, shard_size=1))
    assert snapshot(data) == before


# ----------------------------------------------------------------------------- part 7: input from others


def test_symlinks_out_of_the_videos_folder_are_failures_never_read(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("THE SECRET")
    write_video(outside / "far.mp4", make_frames(9, 32, 32, seed=3), fps=8, crf=0)
    videos = write_clips(tmp_path / "videos", ["ok.mp4"])
    write_video(videos / "nocap.mp4", make_frames(9, 32, 32, seed=2), fps=8, crf=0)
    (videos / "nocap.txt").symlink_to(outside / "secret.txt")
    (videos / "far.mp4").symlink_to(outside / "far.mp4")
    (videos / "near.mp4").symlink_to(videos / "ok.mp4")  # a link inside the folder is fine
    (videos / "near.txt").write_text("near caption")
    data = tmp_path / "data"
    result = extract(xcfg(videos, data, allow_uncaptioned=True))
    assert (result.samples, result.failed) == (2, 2)
    failures = {json.loads(l)["source"]: json.loads(l)["reason"] for l in (data / "failures.jsonl").read_text().splitlines()}
    assert set(failures) == {"far.mp4", "nocap.mp4"} and all("outside" in v for v in failures.values())
    assert not any(b"THE SECRET" in content for content in snapshot(data).values())


def test_metadata_lines_and_captions_are_bounded(tmp_path):
    meta = tmp_path / "metadata.jsonl"
    meta.write_text(json.dumps({"file_name": "a.mp4", "text": "ok", "colour": "red", "n": 3, "huge": "x" * 100_000, "nested": {"a": 1}}) + "\n")
    assert C.load_captions(tmp_path)["a.mp4"] == {"file_name": "a.mp4", "text": "ok", "colour": "red", "n": 3}
    meta.write_text(json.dumps({"file_name": "a.mp4", "text": "x" * (C.MAX_CAPTION_CHARS + 1)}) + "\n")
    with pytest.raises(InputError, match=r"metadata.jsonl:1: caption of 16385 characters"):
        C.load_captions(tmp_path)
    meta.write_text(json.dumps({"file_name": "a.mp4", "text": "ok"}) + "\n" + json.dumps({"file_name": "b.mp4", "text": "ok", "pad": "y" * C.MAX_LINE_BYTES}) + "\n")
    with pytest.raises(InputError, match=r"metadata.jsonl:2: line longer than 1048576 bytes"):
        C.load_captions(tmp_path)
    # through the CLI: one line, exit 2, nothing written
    write_video(tmp_path / "a.mp4", make_frames(9, 32, 32), fps=8, crf=0)
    r = run_inproc("extract", tmp_path, "--out", tmp_path / "data", "--fps", "8")
    one_line_error(r, "metadata.jsonl:2", "line longer")
    assert not (tmp_path / "data").exists()


def test_a_long_sidecar_caption_is_a_failure(tmp_path):
    video = tmp_path / "v.mp4"
    video.touch()
    (tmp_path / "v.txt").write_text("x" * (C.MAX_CAPTION_CHARS + 1))
    with pytest.raises(InputError, match="caption longer than"):
        C.caption_for(video, tmp_path, {})


@pytest.mark.parametrize("content, words", [
    (None, ["/dev/zero", "not a regular file"]),
    ("DIR", ["not a regular file"]),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", ["not UTF-8"]),
    (b" " * (1 << 20) + b"{}", ["larger than 1024 KiB"]),
    ('{"steps": true}', ["steps must be a whole number", "true"]),
    ('{"steps": null}', ["steps must be a value (null is not allowed here)"]),
    ('{"steps": 10.0}', ["steps must be a whole number"]),
    ('{"lr": "fast"}', ["lr must be a finite number"]),
    ('{"lr": NaN}', ["lr must be a finite number"]),
    ('{"resume": 1}', ["resume must be true or false"]),
    ('{"preset": 3}', ["preset must be a string"]),
])
def test_config_file_is_a_small_regular_file_of_strictly_typed_values(tmp_path, content, words):
    if content is None:
        path = Path("/dev/zero")
    elif content == "DIR":
        path = tmp_path / "cfgdir"
        path.mkdir()
    else:
        path = tmp_path / "c.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "run"
    r = run_inproc("train-latent", tmp_path / "data", "--config", path, "--out", out)
    one_line_error(r, "--config", *words)
    assert not out.exists()


def test_config_file_null_where_the_option_is_optional_is_fine(tmp_path):
    (tmp_path / "c.json").write_text('{"compressor": null, "shift": null, "steps": 3}')
    r = run_inproc("train-latent", tmp_path / "nodata", "--config", tmp_path / "c.json", "--out", tmp_path / "run")
    one_line_error(r, "--compressor is required")  # got past the config to the checks of its values


# ----------------------------------------------------------------------------- part 8: numbers


@pytest.mark.parametrize("args, words", [
    (["extract", "V", "--fps", "nan"], ["--fps nan", "finite"]),
    (["extract", "V", "--fps", "inf"], ["--fps inf", "finite"]),
    (["extract", "V", "--semantic-fps", "nan"], ["--semantic-fps nan"]),
    (["extract", "V", "--max-seconds", "nan"], ["--max-seconds nan"]),
    (["train-latent", "V", "--lr", "nan"], ["--lr nan"]),
    (["train-semantic", "V", "--latent-run", "V", "--ema-decay", "-inf"], ["--ema-decay -inf"]),
    (["fit-compressor", "V", "--steps", str(2**64)], ["--steps", "out of range"]),
    (["generate", PROMPT, "--seed", str(2**64)], ["--seed 18446744073709551616", "out of range"]),
    (["generate", PROMPT, "--seed", "-1"], ["--seed -1", "from 0"]),
    (["generate", PROMPT, "--cfg", "nan"], ["--cfg nan"]),
    (["generate", PROMPT, "--steps", "1000000000000"], ["--steps", "from 1 to 10000"]),
    (["generate", PROMPT, "--latent-steps", "10001"], ["--latent-steps", "from 1 to 10000"]),
    (["generate", PROMPT, "--seconds", "nan"], ["--seconds"]),
    (["generate", PROMPT, "--seconds", "inf"], ["--seconds"]),
    (["generate", "x" * 9000], ["9000 characters", "8192"]),
    (["drift", "V", "--segment", "nan"], ["--segment nan"]),
    (["extract", "V", "--num-workers", "1000000000000"], ["--num-workers", "256"]),
    (["extract", "V", "--fps", "1e12"], ["--fps", "at most 1000"]),
    (["train-latent", "V", "--condition", "none", "--batch-size", "1000000000000"], ["--batch-size", "at most 1048576"]),
    (["fit-compressor", "V", "--num-workers", "1000000000000"], ["--num-workers", "at most 256"]),
    (["toy-data", "V", "--size", "1000000000000"], ["--size", "4096"]),
    (["toy-data", "V", "--count", "1000000000000"], ["--count", "1000000"]),
    (["toy-data", "V", "--seconds", "1e12"], ["--seconds", "3600"]),
])
def test_numbers_are_checked_before_work_starts(tmp_path, args, words):
    args = [str(tmp_path / "v") if a == "V" else a for a in args]
    out = [] if args[0] in ("drift", "toy-data") else ["--out", str(tmp_path / ("o.mp4" if args[0] == "generate" else "o"))]
    r = run_inproc(*args, *out)
    one_line_error(r, *words)
    assert list(tmp_path.iterdir()) == []


def test_binary_prompts_file_is_one_line(tmp_path):
    (tmp_path / "p.txt").write_bytes(b"\xff\xfe\x00garbage\x80")
    r = run_inproc("generate", "--prompts-file", tmp_path / "p.txt", "--out", tmp_path / "o.mp4")
    one_line_error(r, "p.txt", "not UTF-8")


def test_generate_states_the_cost_and_refuses_what_cannot_fit(runs, tmp_path):
    from semgen_cli.steps.generate import GenerateConfig, resolve

    base = dict(prompts=[PROMPT], out=str(tmp_path / "o.mp4"), latent_run=str(runs / "lat"), semantic_run=str(runs / "sem"))
    small, long = resolve(GenerateConfig(**base, seconds=2)), resolve(GenerateConfig(**base, seconds=600))
    assert 0 < small.memory_bytes < long.memory_bytes
    assert "estimated peak memory" in small.settings(GenerateConfig(**base))["cost"]
    assert any("the trained length" in w and "estimated peak memory" in w for w in long.warnings)  # a long request says what it costs
    assert not any("the trained length" in w for w in small.warnings)
    r = run_inproc("generate", PROMPT, "--seconds", "1e9", "--latent-run", runs / "lat", "--semantic-run", runs / "sem", "--out", tmp_path / "o.mp4")
    one_line_error(r, "--seconds 1e+09", "memory")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- part 6: outputs


def _gen_args(runs: Path, out: Path, seed: int) -> list:
    return ["generate", PROMPT, "--latent-run", runs / "lat", "--semantic-run", runs / "sem", "--steps", "2",
            "--seconds", "1", "--seed", str(seed), "--out", out, "--save-semantics"]


def test_plan_mp4_and_sidecar_are_committed_together(runs, tmp_path, monkeypatch):
    """A failure (or Ctrl-C) during decode leaves the previous mp4, plan and sidecar as they were
    and no temporary file; a complete run replaces all three."""
    from semgen_cli import pipeline as G

    out = tmp_path / "o.mp4"
    r = run_inproc(*_gen_args(runs, out, 1))
    assert r.returncode == 0, r.stderr
    before = snapshot(tmp_path)
    assert set(before) == {"o.mp4", "o.json", "o.semantic.safetensors"}

    real = G.decoded_frames

    def interrupted(*a, **k):
        for part in real(*a, **k):
            yield part
            raise KeyboardInterrupt

    monkeypatch.setattr(G, "decoded_frames", interrupted)
    r = run_inproc(*_gen_args(runs, out, 2))
    assert r.returncode == 130
    assert snapshot(tmp_path) == before
    monkeypatch.setattr(G, "decoded_frames", real)
    r = run_inproc(*_gen_args(runs, out, 2))
    after = snapshot(tmp_path)
    assert r.returncode == 0 and set(after) == set(before) and all(after[k] != before[k] for k in before)
    assert json.loads(after["o.json"])["seed"] == 2


def test_unwritable_output_folder_is_one_line(runs, tmp_path):
    (tmp_path / "file").write_text("in the way")
    out = tmp_path / "file" / "o.mp4"
    r = run_inproc("generate", PROMPT, "--latent-run", runs / "lat", "--semantic-run", runs / "sem", "--seconds", "1", "--out", out)
    one_line_error(r, str(out), "cannot write in")
    assert (tmp_path / "file").read_text() == "in the way"


def test_read_only_file_system_is_one_line_and_leaves_no_temp(runs, tmp_path, monkeypatch):
    """os.replace failing with EROFS (as on a file system remounted read-only mid-run)."""
    out = tmp_path / "o.mp4"
    real = os.replace

    def read_only(src, dst):
        if str(dst).endswith(".semantic.safetensors"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", read_only)
    r = run_inproc(*_gen_args(runs, out, 1))
    one_line_error(r, "o.semantic.safetensors", "Read-only file system")
    assert snapshot(tmp_path) == {}


@pytest.mark.slow
def test_full_disk_is_one_line_and_leaves_no_temp(runs, tmp_path):
    """A file-size limit makes every write past 8 KiB fail as a full disk does (EFBIG, not ENOSPC:
    the same code paths), for ffmpeg too, which inherits it."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    out = tmp_path / "o.mp4"
    args = [str(a) for a in _gen_args(runs, out, 1)][:-1]  # no plan: the mp4 is what overflows
    r = subprocess.run([sys.executable, "-m", "semgen_cli.cli.app", *args, "--seconds", "4"],
                       capture_output=True, text=True, preexec_fn=limit, env={**os.environ, "COLUMNS": "200"})
    one_line_error(r, str(out))
    # Python's own writes fail with EFBIG; ffmpeg, whose SIGXFSZ Popen restores, is stopped by it
    assert "File too large" in r.stderr or "SIGXFSZ" in r.stderr, r.stderr
    assert snapshot(tmp_path) == {}


@pytest.mark.slow
def test_sigterm_during_generate_removes_its_temp_files(runs, tmp_path):
    import time

    out = tmp_path / "o.mp4"
    args = [str(a) for a in _gen_args(runs, out, 1)]
    proc = subprocess.Popen([sys.executable, "-m", "semgen_cli.cli.app", *args, "--seconds", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not list(tmp_path.glob(".*tmp-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "finished before a temp file was seen"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert "Traceback" not in proc.stderr.read().decode()
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize("err", [
    MemoryError("Unable to allocate 7.28 TiB for an array with shape (1000000000000,)"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 8000000000000 bytes."),
])
def test_an_allocation_failure_is_one_line(tmp_path, monkeypatch, err):
    """What a flag too large for this machine ends in (fit-compressor --hidden 10**12 did so)."""
    from semgen_cli.toy import dataset

    def too_big(*a, **k):
        raise err

    monkeypatch.setattr(dataset, "write_toy_dataset", too_big)
    r = run_inproc("toy-data", tmp_path / "v", "--count", "1")
    one_line_error(r, "out of memory", str(err).split(":")[0][:20])

"""Every shell command in README.md and docs/*.md runs (slow).

The fenced blocks tagged ``bash``, ``sh``, ``shell`` or ``console`` are the commands a reader
copies. A document's blocks run in order in one temporary folder (a later block may read what an
earlier one wrote), with `semgen` being this checkout and `examples/` linked into the folder, as if
run from the repository root. A ``bash``/``sh`` block runs as one ``set -e`` script; in a
``console`` block each ``$ `` line runs on its own, must exit 0, and every output line the
document shows starting with ``exit `` must be printed.

Nothing is left out silently: the three tables below say, with a reason each, what is skipped
(weights this machine does not have, or the test suite itself), what is shortened (lengths and
step counts only, never the command) and what a document's blocks need first. A fast test keeps
the tables current: each entry must still match the documents.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "shell", "console")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)

# (document, text in the block) -> why the block does not run here
SKIP = {
    ("README.md", "-e '.[test]' && .venv/bin/python -m pytest"):
        "runs the whole test suite, of which this test is part (.ci/run runs that command)",
    ("README.md", "--semantic qwen2.5-vl:/models/"):
        "needs Qwen2.5-VL-3B, Wan2.1-T2V-1.3B and umt5-xxl weights under /models",
    ("docs/baselines.md", "--init wan:/models/"):
        "needs Wan2.1-T2V-1.3B weights under /models",
    ("docs/real-models.md", "W=/path/to/weights"):
        "needs the released Wan2.1, Qwen2.5-VL and UMT5 weights",
    ("docs/multigpu.md", "--nproc_per_node=8"):
        "8 ranks, a node with 8 GPUs (the 2-rank commands above it run)",
}

_TINY = "--preset tiny --steps 2 --batch-size 2"
_SHORTER = "training and sampling lengths: tiny preset, a few steps (the documented defaults take hours on a CPU)"
# (document, text, replacement, why): applied to every block of the document
SUBSTITUTIONS = [
    ("README.md", "python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e . && ", "",
     "a fresh virtualenv needs the network; the commands after it run with the semgen under test"),
    ("README.md", ".venv/bin/semgen", "semgen", "the semgen under test (see the line above)"),
    ("README.md", "--seconds 60", "--seconds 4", "a 4 s video instead of a minute"),
    ("README.md", "bash examples/pipeline.sh", "SECONDS_OUT=4 bash examples/pipeline.sh",
     "the script's own knob for the length of its video (60 s by default)"),
    ("docs/baselines.md", "--out runs/base-ct-swin", f"{_TINY} --out runs/base-ct-swin", _SHORTER),
    ("docs/baselines.md", "--seconds 60 --out base.mp4", "--seconds 2 --steps 2 --out base.mp4", _SHORTER),
    ("docs/baselines.md", "--seconds 20", "--seconds 2 --count 1 --steps 2", _SHORTER),
    ("docs/baselines.md", "--out runs/comp-vae", "--steps 5 --batch-size 2 --out runs/comp-vae", _SHORTER),
    ("docs/baselines.md", "--out runs/latent-vae", f"{_TINY} --out runs/latent-vae", _SHORTER),
    ("docs/baselines.md", "--out runs/semantic-vae", f"{_TINY} --out runs/semantic-vae", _SHORTER),
    ("docs/baselines.md", "--out vae.mp4", "--seconds 2 --steps 2 --out vae.mp4", _SHORTER),
    ("docs/baselines.md", "--out runs/comp-none", "--steps 5 --batch-size 2 --out runs/comp-none", _SHORTER),
    ("docs/baselines.md", "--out runs/latent-none", f"{_TINY} --out runs/latent-none", _SHORTER),
    ("docs/baselines.md", "--out runs/semantic-none", f"{_TINY} --out runs/semantic-none", _SHORTER),
    ("docs/baselines.md", "--out none.mp4", "--seconds 2 --steps 2 --out none.mp4", _SHORTER),
    ("docs/multigpu.md", "--seconds 60 --out out.mp4", "--seconds 4 --out out.mp4", "a 4 s video instead of a minute"),
    ("docs/multigpu.md", "--seconds 10 60", "--seconds 10 --steps 2", "the benchmark at 10 s only, 2 steps"),
]


def _python_block(doc: str, marker: str) -> str:
    return next(b for lang, _, b in blocks(doc, ("python",)) if marker in b)


# document -> (shell run before its first block, why)
SETUP = {
    "docs/baselines.md": (
        "semgen toy-data videos --count 4 --seconds 4 --seed 0\n"
        "semgen extract videos --out data --semantic tiny --vae tiny --text tiny --fps 8",
        "the blocks train on a `data` folder the document assumes: tiny toy data"),
    "docs/drift.md": (
        lambda: "python - <<'PY'\n" + _python_block("docs/drift.md", 'write_video("fade.mp4"') + "PY\n"
                "printf 'not a video' > bad.mp4",
        "the worked example's clips, made by the document's own python block, and a corrupt bad.mp4"),
}


def blocks(doc: str, langs=SHELL) -> list[tuple[str, int, str]]:
    """(language, line, text) of each fenced block of `doc` in one of `langs`."""
    text = (ROOT / doc).read_text()
    return [(m.group(1), text[:m.start()].count("\n") + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) in langs]


def skip_reason(doc: str, text: str) -> str | None:
    return next((why for (d, key), why in SKIP.items() if d == doc and key in text), None)


def substituted(doc: str, text: str) -> str:
    for d, old, new, _ in SUBSTITUTIONS:
        if d == doc:
            text = text.replace(old, new)
    return text


def console_commands(text: str) -> list[tuple[str, list[str]]]:
    """Each `$ ` command of a console block (continuation lines joined) and the output lines after it."""
    out: list[tuple[str, list[str]]] = []
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("$ "):
            cmd = line[2:]
            while cmd.endswith("\\"):
                cmd = cmd[:-1] + next(lines)
            out.append((cmd, []))
        elif out:
            out[-1][1].append(line)
    return out


def test_tables_match_the_documents():
    """Every skip and substitution still finds its text (no stale entries), each skip names one
    block, each substitution changes something, and there are blocks to run."""
    runnable = {doc: [b for _, _, b in blocks(doc)] for doc in DOCS}
    assert sum(map(len, runnable.values())) >= 8
    for (doc, key), why in SKIP.items():
        assert why and sum(key in b for b in runnable.get(doc, [])) == 1, f"stale skip entry {doc}: {key!r}"
    for doc, old, new, why in SUBSTITUTIONS:
        assert why and old != new and any(old in b for b in runnable.get(doc, [])), f"stale substitution {doc}: {old!r}"
    for doc, (_, why) in SETUP.items():
        assert why and runnable.get(doc), f"setup for {doc}, which has no shell block"


def _env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "COLUMNS": "200",
            "OMP_NUM_THREADS": "1"}


def _bash(script: str, cwd: Path, errexit: bool = True) -> subprocess.CompletedProcess:
    head = "set -eo pipefail\n" if errexit else ""
    return subprocess.run(["bash", "-c", head + script], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOCS if any(not skip_reason(d, b) for _, _, b in blocks(d))])
def test_documented_commands_run(doc, tmp_path):
    for folder in ("examples", "benchmarks", "semgen_cli"):  # as if run from the repository root
        (tmp_path / folder).symlink_to(ROOT / folder)
    if doc in SETUP:
        setup = SETUP[doc][0]
        r = _bash(setup() if callable(setup) else setup, tmp_path)
        assert r.returncode == 0, f"setup of {doc}: {r.stderr[-2000:]}"
    ran = 0
    for lang, line, text in blocks(doc):
        if skip_reason(doc, text):
            continue
        text = substituted(doc, text)
        if lang != "console":
            r = _bash(text, tmp_path)
            assert r.returncode == 0, f"{doc}:{line}: exit {r.returncode}\n{text}\n{r.stderr[-3000:]}"
        for cmd, shown in console_commands(text) if lang == "console" else []:
            r = _bash(cmd, tmp_path, errexit=False)
            assert r.returncode == 0, f"{doc}:{line}: {cmd}: exit {r.returncode}\n{r.stderr[-3000:]}"
            for want in (s for s in shown if s.startswith("exit ")):
                assert want in r.stdout.splitlines(), f"{doc}:{line}: {cmd}: the document shows {want!r}; got {r.stdout[-500:]!r}"
        ran += 1
    assert ran, f"{doc}: no block ran"

"""Usage errors as a user meets them: one short message, exit 2, never a traceback, whatever click
the installed typer brings (typer ≥ 0.16 vendors its own click, whose exceptions are not the
`click` package's). Each case runs through `main()` in this process (what the console script
calls); the installed console script itself is run for help, version and one usage error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from semgen_cli.cli.app import COMMANDS
from tests.conftest import run_inproc


def _console_script() -> str:
    here = Path(sys.executable).parent / "semgen"
    found = str(here) if here.exists() else shutil.which("semgen")
    if found is None:
        pytest.skip("the semgen console script is not installed")
    return found


def _console(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run([_console_script(), *args], capture_output=True, text=True, env=env, timeout=60)


def _run(*args: str) -> subprocess.CompletedProcess:
    return run_inproc(*args)


def _assert_usage_error(r: subprocess.CompletedProcess, what: str) -> None:
    out = r.stdout + r.stderr
    assert "Traceback" not in out, f"{what}: traceback\n{out}"
    assert r.returncode == 2, f"{what}: exit {r.returncode}\n{out}"
    assert len(out.strip().splitlines()) <= 12, f"{what}: {len(out.splitlines())} lines\n{out}"


@pytest.mark.parametrize("name", [c[0] for c in COMMANDS])
def test_unknown_option_is_a_usage_error(name):
    r = _run(name, "--no-such-flag")
    _assert_usage_error(r, f"semgen {name} --no-such-flag")
    assert "--no-such-flag" in r.stderr


@pytest.mark.parametrize("name", ["extract", "inspect", "fit-compressor", "train-latent", "train-semantic", "drift"])
def test_missing_argument_is_a_usage_error(name):
    _assert_usage_error(_run(name), f"semgen {name}")


@pytest.mark.parametrize(
    "args",
    [
        ("bogus-command",),
        ("train-latent", "DATA", "--steps", "abc"),
        ("train-latent", "DATA", "--steps"),
        ("generate", "x", "--seconds", "abc"),
        ("fit-compressor", "DATA", "--dim", "1.5x"),
    ],
)
def test_bad_values_and_unknown_commands_are_usage_errors(args):
    _assert_usage_error(_run(*args), "semgen " + " ".join(args))


def test_out_naming_a_directory_is_a_usage_error(tmp_path):
    (tmp_path / "out.mp4").mkdir()
    r = _run("generate", "x", "--out", str(tmp_path / "out.mp4"))
    _assert_usage_error(r, "generate --out DIR")


def test_console_script_help_version_and_a_usage_error():
    assert _console("--version").returncode == 0
    r = _console("extract", "--help")
    assert r.returncode == 0 and "Usage" in r.stdout
    r = _console("train-latent", "DATA", "--steps", "abc")
    _assert_usage_error(r, "semgen train-latent DATA --steps abc (console script)")
    assert "--steps" in r.stderr


def test_click_kind_matches_any_click():
    """The match is by class name inside a click module, so the vendored and the standalone
    click's exceptions are both recognised, and nothing else is."""
    from semgen_cli.cli.app import _click_kind

    assert _click_kind(ValueError("x")) is None
    click = pytest.importorskip("click")
    assert _click_kind(click.UsageError("x")) == "ClickException"
    assert _click_kind(click.exceptions.Abort()) == "Abort"
    try:
        from typer._click import exceptions as vendored  # typer >= 0.16
    except ImportError:
        return
    assert _click_kind(vendored.NoSuchOption("--x")) == "ClickException"

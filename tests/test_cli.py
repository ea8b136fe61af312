"""The CLI surface: fast help, every command's --help, version, error formatting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from semgen_cli.cli.app import COMMANDS
from tests.conftest import run_inproc


def test_help_lists_every_command_and_does_not_import_torch():
    code = "import sys; from semgen_cli.cli import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", "importing the CLI must not import torch"
    r = run_inproc("--help")
    assert r.returncode == 0
    for name, _, _ in COMMANDS:
        assert name in r.stdout


@pytest.mark.parametrize("name", [c[0] for c in COMMANDS])
def test_every_command_has_help(name):
    r = run_inproc(name, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout


def test_version():
    r = run_inproc("--version")
    assert r.returncode == 0 and r.stdout.startswith("semgen ")


def test_debug_env_shows_traceback(tmp_path, monkeypatch):
    from semgen_cli.errors import SemgenError

    monkeypatch.setenv("SEMGEN_DEBUG", "1")
    with pytest.raises(SemgenError):  # main() lets it through: Python prints its traceback
        run_inproc("inspect", str(tmp_path / "nope"))
    monkeypatch.delenv("SEMGEN_DEBUG")
    r = run_inproc("inspect", str(tmp_path / "nope"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("error:")

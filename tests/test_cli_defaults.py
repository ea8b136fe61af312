"""Every flag's default is the library's: each parameter of each typer command is matched to a
field of the command's dataclasses (or a keyword of its step function) and their defaults must
be equal, so the command and the library train alike. A new flag is covered automatically: it
fails here until it has a library counterpart or is listed in CLI_ONLY with the reason.
Choices (--preset, --attention, …) come from the registries and are refused before anything
is printed or written."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from semgen_cli.cli.app import COMMANDS, app
from tests.conftest import run_inproc


def _sources(name: str) -> list:
    """The library objects a command's flags stand for, first match wins: dataclasses, then
    functions (keyword defaults), then `dict`s of defaults that override what follows them."""
    from semgen_cli.steps import drift, extract, fit_compressor, generate, toy_eval, train_latent, train_semantic
    from semgen_cli.toy import dataset, prompts
    from semgen_cli.training import TrainConfig
    from semgen_cli.validation import MonitorConfig

    return {
        "toy-data": [dataset.ToyDataConfig, dataset.write_toy_dataset],
        "extract": [extract.ExtractConfig],
        "inspect": [],
        "fit-compressor": [fit_compressor.FitCompressorConfig, fit_compressor.FitCompressorConfig.TRAIN_DEFAULTS, TrainConfig,
                           MonitorConfig, fit_compressor.fit_compressor],
        "train-latent": [train_latent.TrainLatentConfig, TrainConfig, MonitorConfig, train_latent.train_latent],
        "train-semantic": [train_semantic.TrainSemanticConfig, TrainConfig, MonitorConfig, train_semantic.train_semantic],
        "generate": [generate.GenerateConfig],
        "drift": [drift.DriftConfig],
        "toy-eval": [toy_eval.ToyEvalConfig, prompts.default_prompts],
        "info": [],
        "merge": [],
    }[name]


RENAMED = {"warmup": "warmup_steps", "exclude_combos": "exclude"}
"""Flag name → library name, where they differ."""

CLI_ONLY = {
    "config": "a file of flag values",
    "dry_run": "prints the resolved settings instead of running",
    "as_json": "output format",
    "plot": "output file (DriftConfig.curves follows it)",
    "verify": "inspect has no library config",
    "samples": "inspect has no library config",
    "prompt": "GenerateConfig.prompts, together with --prompts-file",
    "prompts_file": "GenerateConfig.prompts",
    "prompts": "toy-eval's prompt file; ToyEvalConfig.prompts is the list",
    "pipeline": "names the runs toy-eval scores",
    "steps@generate": "sets both stages' steps; None: each stage's default",
    "cfg@generate": "sets both stages' CFG; None: each stage's default",
    "semantic_steps@generate": "None: GenerateConfig.semantic_steps (checked below)",
    "latent_steps@generate": "None: GenerateConfig.latent_steps",
    "semantic_cfg@generate": "None: GenerateConfig.semantic_cfg",
    "latent_cfg@generate": "None: GenerateConfig.latent_cfg",
}
"""Flags with no library default of their own, and why. Keys are `name` or `name@command`."""


def _commands():
    import typer.main

    group = typer.main.get_command(app)
    return {name: group.commands[name] for name, _, _ in COMMANDS}


def _library_default(sources: list, name: str):
    """(found, default) of `name` in the first source that has it."""
    for src in sources:
        if isinstance(src, dict):
            if name in src:
                return True, src[name]
        elif dataclasses.is_dataclass(src):
            for f in dataclasses.fields(src):
                if f.name == name:
                    if f.default is not dataclasses.MISSING:
                        return True, f.default
                    if f.default_factory is not dataclasses.MISSING:
                        return True, f.default_factory()
                    return True, dataclasses.MISSING
        else:
            p = inspect.signature(src).parameters.get(name)
            if p is not None and p.default is not inspect.Parameter.empty:
                return True, p.default
    return False, None


def _as_library(value):
    """A flag's default in the library's terms: paths as strings, comma lists and `none` parsed."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)) and not value:
        return None
    return value


def _equal(cli, lib) -> bool:
    cli, lib = _as_library(cli), _as_library(lib)
    if isinstance(cli, str) and not isinstance(lib, str) and lib is not None:
        cli = None if cli.lower() == "none" else type(lib)(cli)  # fit-compressor --dim "8" ↔ 8
    return cli == lib


@pytest.mark.parametrize("command", [c[0] for c in COMMANDS])
def test_every_cli_default_is_the_library_default(command):
    cmd = _commands()[command]
    sources = _sources(command)
    checked, problems = [], []
    for param in cmd.params:
        if param.name == "help" or getattr(param, "required", False) and param.default is None:
            continue
        if param.name in CLI_ONLY or f"{param.name}@{command}" in CLI_ONLY:
            continue
        found, lib = _library_default(sources, RENAMED.get(param.name, param.name))
        if not found:
            problems.append(f"--{param.name.replace('_', '-')}: no library counterpart; give it one or list it in CLI_ONLY")
        elif lib is dataclasses.MISSING:
            problems.append(f"--{param.name.replace('_', '-')}: the library field has no default, the flag has {param.default!r}")
        elif not _equal(param.default, lib):
            problems.append(f"--{param.name.replace('_', '-')}: CLI {param.default!r}, library {lib!r}")
        else:
            checked.append(param.name)
    assert not problems, f"semgen {command}: " + "; ".join(problems)
    if sources:
        assert checked, f"semgen {command}: no flag was compared"


def test_generate_none_flags_mean_the_config_defaults():
    """generate's per-stage flags default to None, which `command` turns into GenerateConfig's."""
    from semgen_cli.cli.generate import _pick
    from semgen_cli.steps.generate import GenerateConfig

    cmd = _commands()["generate"]
    for name in ("semantic_steps", "latent_steps", "semantic_cfg", "latent_cfg", "steps", "cfg"):
        assert next(p for p in cmd.params if p.name == name).default is None
    assert _pick(None, None, GenerateConfig.semantic_steps) == GenerateConfig.semantic_steps


def test_source_reader_matches_the_imported_dataclasses():
    """`Defaults` reads dataclasses from source (no torch at CLI import): it agrees with them."""
    from semgen_cli.cli.options import Defaults, constant
    from semgen_cli.models.dit import ATTENTION_KINDS
    from semgen_cli.models.presets import PRESETS
    from semgen_cli.steps.fit_compressor import FitCompressorConfig
    from semgen_cli.steps.train_latent import TrainLatentConfig
    from semgen_cli.training import TrainConfig

    for cls in (TrainConfig, TrainLatentConfig, FitCompressorConfig):
        d = Defaults(cls.__module__, cls.__name__)
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                assert getattr(d, f.name) == f.default, (cls.__name__, f.name)
    assert Defaults("semgen_cli.steps.fit_compressor", "FitCompressorConfig").classvar("TRAIN_DEFAULTS") == FitCompressorConfig.TRAIN_DEFAULTS
    assert constant("semgen_cli.models.presets", "PRESETS") == tuple(PRESETS)
    assert constant("semgen_cli.models.dit", "ATTENTION_KINDS") == tuple(ATTENTION_KINDS)
    TrainConfig(**FitCompressorConfig.TRAIN_DEFAULTS)  # its keys are TrainConfig's and its values valid


def test_preset_and_attention_choices_come_from_the_registries():
    from semgen_cli.models.dit import ATTENTION_KINDS
    from semgen_cli.models.presets import PRESETS

    cmds = _commands()
    for command in ("train-latent", "train-semantic"):
        preset = next(p for p in cmds[command].params if p.name == "preset")
        assert all(name in preset.help for name in PRESETS)
    for command in ("train-latent", "generate"):
        attention = next(p for p in cmds[command].params if p.name == "attention")
        assert all(kind in attention.help for kind in ATTENTION_KINDS)


def _refused_before_anything(r, flag: str, choices, out: Path) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    head = f"error: {flag}"
    assert len(lines) == 1 and lines[0].startswith(head) and lines[0][len(head)] in " :", r.stderr
    assert all(c in lines[0] for c in choices), lines[0]
    assert r.stdout == "", "printed as if starting"
    assert not out.exists(), f"{out} was created"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Real extracted data and a compressor (as ../shared/checks/house.sh has): a bad --preset
    must be refused before the data is read, not only when there is none."""
    from tests.conftest import tiny_data

    return tiny_data(tmp_path_factory.mktemp("preset"), count=2, compressor_steps=1, batch=2)


@pytest.mark.parametrize("command", ["train-latent", "train-semantic"])
@pytest.mark.parametrize("via", ["flag", "config"])
def test_bogus_preset_is_refused_before_anything_is_written(tmp_path, data, command, via):
    from semgen_cli.models.presets import PRESETS

    out = tmp_path / "run" / "out"
    extra = ["--latent-run", str(tmp_path / "lat")] if command == "train-semantic" else ["--compressor", str(data.parent / "comp")]
    if via == "flag":
        bogus = ["--preset", "bogus"]
    else:
        (tmp_path / "c.json").write_text(json.dumps({"preset": "bogus"}))
        bogus = ["--config", str(tmp_path / "c.json")]
    r = run_inproc(command, str(data), *extra, *bogus, "--out", str(out))
    _refused_before_anything(r, "--preset", PRESETS, out.parent)


@pytest.mark.parametrize("args", [("train-latent", "DATA", "--attention", "local", "--out"), ("generate", "x", "--attention", "local", "--out")])
def test_bogus_attention_is_refused_before_anything_is_written(tmp_path, args):
    from semgen_cli.models.dit import ATTENTION_KINDS

    out = tmp_path / "o" / "out.mp4"
    r = run_inproc(*[str(tmp_path / "d") if a == "DATA" else a for a in args], str(out))
    _refused_before_anything(r, "--attention", ATTENTION_KINDS, out.parent)


@pytest.mark.parametrize("case", ["no-compressor", "latent-run-is-a-compressor", "no-init", "no-data"])
def test_wrong_input_folders_are_refused_before_the_settings(tmp_path, data, case):
    """A run folder or data folder that is not what the flag needs: the library's one-line error,
    before the settings table is printed and before --out is created."""
    comp, out = data.parent / "comp", tmp_path / "run" / "out"
    args, flag = {
        "no-compressor": (("train-latent", data, "--compressor", tmp_path / "nope"), "--compressor"),
        "latent-run-is-a-compressor": (("train-semantic", data, "--latent-run", comp), "--latent-run"),
        "no-init": (("train-latent", data, "--compressor", comp, "--init", tmp_path / "nope"), "--init"),
        "no-data": (("fit-compressor", tmp_path / "nodata"), str(tmp_path / "nodata")),
    }[case]
    r = run_inproc(*map(str, args), "--out", str(out))
    _refused_before_anything(r, flag, (), out.parent)

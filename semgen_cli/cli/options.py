"""Option parsers shared by several commands (sizes like 480x832, device names), the check
every command's numbers pass before its work starts, and where flags get their defaults and
choices: the library's dataclasses and registries (`Defaults`, `constant`, `choice`)."""

from __future__ import annotations

import ast
import functools
import math
from pathlib import Path
from typing import Any

from semgen_cli.errors import ConfigError

INT_LIMIT = 2**63
"""Whole-number flags lie in [-INT_LIMIT, INT_LIMIT) (seeds in [0, INT_LIMIT)): what torch and
numpy take without overflowing."""


def check_numbers(values: dict[str, Any]) -> None:
    """Refuse, by flag, a non-finite number (`--fps nan`, `--lr inf`) or a whole number out of
    range (`--seed 18446744073709551616`) among a command's parsed parameters; the command's
    config then checks each value's own range. Lists and tuples are checked element by element."""
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(v, bool):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{flag} {v}: expected a finite number")
            if isinstance(v, int):
                low = 0 if name == "seed" or name.endswith("_seed") else -INT_LIMIT
                if not low <= v < INT_LIMIT:
                    raise ConfigError(f"{flag} {v}: out of range; expected a whole number from {low} to {INT_LIMIT - 1}")


def parse_size(text: str | None, flag: str = "--size") -> tuple[int, int] | None:
    """'64' → (64, 64); '480x832' → (480, 832); None stays None."""
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected N or HxW, e.g. 64 or 480x832") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise ConfigError(f"{flag} {text!r}: expected N or HxW with positive numbers")
    return values[0], values[1]


class Defaults:
    """The field defaults and docstrings of a library dataclass, read from its source file without
    importing it (the training steps import torch; `semgen --help` must stay instant), so that every
    flag's default is the dataclass's and the library and the command train alike.

    ``Defaults("semgen_cli.steps.train_latent", "TrainLatentConfig").preset`` → ``"toy"``;
    ``.doc("preset")`` → the field's docstring. ``overrides`` replace defaults (a step's own
    training defaults over TrainConfig's). tests/test_cli_defaults.py checks every flag against
    the imported dataclasses, so this reader and the classes cannot drift apart."""

    def __init__(self, module: str, cls: str, overrides: dict[str, Any] | None = None) -> None:
        self._where = f"{module}.{cls}"
        self._values, self._docs, self._classvars = _read_dataclass(module, cls)
        self._values.update(overrides or {})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self._where} has no field {name!r} with a default") from None

    def doc(self, name: str) -> str:
        """The field's docstring, on one line."""
        return " ".join(self._docs.get(name, "").split())

    def classvar(self, name: str) -> Any:
        """A literal class attribute that is not a field (e.g. a step's own training defaults)."""
        return self._classvars[name]


def constant(module: str, name: str) -> Any:
    """A module-level literal (a registry's names, a tuple of choices) read without importing the module.
    A dict gives its keys, in order: ``constant("semgen_cli.models.presets", "PRESETS")`` → the preset names."""
    tree, consts = _module(module)
    if name not in consts:
        raise LookupError(f"{module}: no literal {name}")
    value = consts[name]
    return tuple(value) if isinstance(value, (dict, list)) else value


def choice(flag: str, choices: tuple[str, ...], optional: bool = False):
    """A typer callback that refuses a value outside `choices` with one line naming `flag` and the
    choices, while the flags are parsed: before the command prints or writes anything."""

    def check(value):
        if value is None and optional:
            return value
        if value not in choices:
            raise ConfigError(f"{flag} {value}: must be one of {', '.join(choices)}")
        return value

    return check


# -------------------------------------------------------------------- source reading (no imports)

_PACKAGE = Path(__file__).resolve().parents[1]


def _files(module: str) -> list[Path]:
    """The source file of `module` (semgen_cli.x.y), or every file of the package it names."""
    rel = Path(*module.split(".")[1:])
    file, package = _PACKAGE / rel.with_suffix(".py"), _PACKAGE / rel
    if file.is_file():
        return [file]
    if package.is_dir():
        return sorted(package.rglob("*.py"))
    raise LookupError(f"{module}: no source under {_PACKAGE}")


@functools.lru_cache(maxsize=None)
def _module(module: str) -> tuple[list[ast.Module], dict[str, Any]]:
    """The parsed files of `module` and its module-level literal constants."""
    trees = [ast.parse(f.read_text(encoding="utf-8"), str(f)) for f in _files(module)]
    consts: dict[str, Any] = {}
    for tree in trees:
        for node in tree.body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(node, "target", None)
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(target, ast.Name) and node.value is not None:
                value = _literal(node.value, consts)
                if value is not _NOT_LITERAL:
                    consts[target.id] = value
    return trees, consts


_NOT_LITERAL = object()


def _literal(node: ast.expr, consts: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name) and node.id in consts:
        return consts[node.id]
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    if isinstance(node, ast.Dict) and all(isinstance(k, ast.Constant) for k in node.keys):
        return {k.value: None for k in node.keys}  # a registry: its names (its values are factories)
    return _NOT_LITERAL


def _read_dataclass(module: str, cls: str) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    trees, consts = _module(module)
    body = next((n.body for t in trees for n in t.body if isinstance(n, ast.ClassDef) and n.name == cls), None)
    if body is None:
        raise LookupError(f"{module}: no class {cls}")
    values: dict[str, Any] = {}
    docs: dict[str, str] = {}
    classvars: dict[str, Any] = {}
    for node, after in zip(body, body[1:] + [None], strict=True):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            classvars[node.targets[0].id] = _literal(node.value, consts)  # a plain class attribute: not a field
            continue
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            docs[name] = after.value.value
        if node.value is None:
            continue
        value = _literal(node.value, consts)
        if "ClassVar" in ast.unparse(node.annotation):
            classvars[name] = value
        elif value is not _NOT_LITERAL:
            values[name] = value
    return values, docs, classvars


def keyword_default(module: str, function: str, name: str) -> Any:
    """The default of keyword parameter `name` of a module-level function, read without importing it."""
    trees, consts = _module(module)
    fn = next((n for t in trees for n in t.body if isinstance(n, ast.FunctionDef) and n.name == function), None)
    if fn is None:
        raise LookupError(f"{module}: no function {function}")
    args = fn.args.args + fn.args.kwonlyargs
    defaults = [None] * (len(fn.args.args) - len(fn.args.defaults)) + fn.args.defaults + fn.args.kw_defaults
    for arg, default in zip(args, defaults, strict=True):
        if arg.arg == name and default is not None:
            value = _literal(default, consts)
            if value is not _NOT_LITERAL:
                return value
    raise LookupError(f"{module}.{function}: no literal default for {name}")

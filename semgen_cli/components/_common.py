"""Shared plumbing for component specs: parsing `kind:PATH`, freezing, fingerprints.

A spec is either a literal (`tiny`, `minilm`, `toy` for the bundled toy-world component) or `kind:PATH` where PATH is a local folder
holding a `from_pretrained` layout. Every loaded component is frozen (eval mode, no grads) and
carries a fingerprint: a short sha256 over its class name, its config and its weights, so a
later step can refuse features made by a different model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from semgen_cli.errors import ConfigError, InputError

TINY_SEED = 0
TOY_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "toy"


def toy_folder(name: str, role: str) -> str:
    """The bundled toy component `name` (the embedded default's, trained on the toy world by
    examples/toy/); the spec `toy` resolves to it wherever semgen is installed."""
    folder = TOY_ASSETS / name
    if not (folder / "config.json").is_file():
        raise InputError(f"the bundled toy {role} is missing ({folder}); reinstall semgen or train it with examples/toy/")
    return str(folder)


def parse_spec(spec: str, role: str, kinds: Iterable[str], literals: Iterable[str]) -> tuple[str, str | None]:
    """Split `kind:PATH` (or a bare literal) into (kind, path); unknown kinds are a ConfigError."""
    kinds, literals = list(kinds), list(literals)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty {role} spec: give one of {_choices(kinds, literals)}")
    spec = spec.strip()
    if spec in literals:
        return spec, None
    kind, sep, path = spec.partition(":")
    if not sep or kind not in kinds:
        raise ConfigError(f"unknown {role} spec {spec!r}: give one of {_choices(kinds, literals)}")
    if not path:
        raise ConfigError(f"{role} spec {spec!r} names no folder: write it as {kind}:PATH")
    return kind, path


def _choices(kinds: list[str], literals: list[str]) -> str:
    return ", ".join([f"{k}:PATH" for k in kinds] + literals)


def require_folder(path: str, spec: str, role: str) -> Path:
    """The folder a spec names must exist and hold a config.json (checked by the caller)."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise InputError(f"{role} folder {folder} (from spec {spec!r}) does not exist: check the path")
    if not folder.is_dir():
        raise InputError(f"{role} spec {spec!r} must name a folder saved with save_pretrained, not a file")
    return folder


def pick_subfolder(folder: Path, sub: str) -> Path:
    """A diffusers pipeline root keeps each component in a subfolder (`vae/`, `text_encoder/`);
    accept either the component folder itself or such a root."""
    if not (folder / "config.json").is_file() and (folder / sub / "config.json").is_file():
        return folder / sub
    return folder


def read_config(folder: Path, spec: str, role: str) -> dict:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise InputError(f"{role} folder {folder} (spec {spec!r}) has no config.json: "
                         f"point the spec at a folder written by save_pretrained")
    try:
        return json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{cfg} is not valid JSON ({exc}): re-save the {role} with save_pretrained") from exc


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


def fingerprint(prefix: str, module: nn.Module, config: Any) -> str:
    """`prefix:` + 12 hex digits of sha256 over class name, canonical config JSON and weights.

    Weights are hashed as float32 (names, shapes, bytes in sorted order), so the same checkpoint
    loaded in bf16 or fp32 gets the same fingerprint when the stored weights are bf16 or fp32.
    """
    return state_fingerprint(prefix, type(module).__name__, module.state_dict(), config)


def state_fingerprint(prefix: str, class_name: str, state: dict[str, torch.Tensor], config: Any) -> str:
    """`fingerprint` over a state dict (a module's, or part of one)."""
    h = hashlib.sha256()
    h.update(class_name.encode())
    h.update(json.dumps(_jsonable(config), sort_keys=True, default=str).encode())
    for name in sorted(state):
        t = state[name]
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if t.is_floating_point():
            t = t.detach().to("cpu", torch.float32)
        else:
            t = t.detach().to("cpu", torch.int64)
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return f"{prefix}:{h.hexdigest()[:12]}"


def _jsonable(config: Any) -> Any:
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if isinstance(config, dict):
        # Keys that record where or with what the config was written, not what the model is.
        drop = {"_name_or_path", "transformers_version", "_diffusers_version", "torch_dtype", "dtype",
                "_commit_hash", "_use_default_values", "_class_name", "architectures"}
        return {k: _jsonable(v) for k, v in config.items() if k not in drop}
    if isinstance(config, (list, tuple)):
        return [_jsonable(v) for v in config]
    return config


@contextlib.contextmanager
def seeded(seed: int = TINY_SEED):
    """Build a tiny random model reproducibly without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_error(role: str, spec: str, folder: Path, exc: Exception) -> InputError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InputError(f"could not load {role} from {folder} (spec {spec!r}): {first[:200]}; "
                      f"check the folder holds that model saved with save_pretrained")


def place(module: nn.Module, device, dtype: torch.dtype) -> nn.Module:
    """Move to device, casting only when the dtype changes (diffusers warns on a no-op cast)."""
    module = module.to(device)
    if any(p.dtype != dtype for p in module.parameters() if p.is_floating_point()):
        module = module.to(dtype)
    return module


@contextlib.contextmanager
def quiet_loading():
    """Silence the libraries' own progress bars and info logs while loading: semgen reports
    progress itself. The previous settings are restored afterwards."""
    import sys

    import transformers.utils.logging as tlog

    dlog = sys.modules.get("diffusers.utils.logging")  # only when diffusers is already imported
    bars, level = tlog.is_progress_bar_enabled(), tlog.get_verbosity()
    dlevel = dlog.get_verbosity() if dlog else None
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    if dlog:
        dlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()
        if dlog:
            dlog.set_verbosity(dlevel)

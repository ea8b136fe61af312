"""Size presets of the DiT: one-line factories in a registry (the DiT ``DiT_models`` pattern).

Paper §3.1 / appendix A (the base model is a Wan-like DiT); the ``wan-*`` presets match the
Wan2.1 T2V checkpoints in diffusers (head dim 128), so ``--init wan:PATH`` loads into them.
``tiny`` is for tests (a training step in milliseconds on CPU); ``toy`` trains on the toy world
on a CPU in tens of minutes.

Each factory takes the data-dependent fields and returns a :class:`DiTConfig`::

    PRESETS["toy"](in_channels=16, text_dim=384, semantic_dim=8, attention="swin", window=4)

Other DiTConfig fields (e.g. ``patch=(1, 1, 1)`` for the stage-2 semantic generator) pass
through as keyword overrides.
"""

from __future__ import annotations

from typing import Callable

from semgen_cli.errors import ConfigError
from semgen_cli.models.dit import DiTConfig


def _preset(**arch) -> Callable[..., DiTConfig]:
    def make(in_channels: int = 16, text_dim: int = 4096, semantic_dim: int = 0,
             attention: str = "full", window: int = 8, **overrides) -> DiTConfig:
        return DiTConfig(**{**arch, "in_channels": in_channels, "text_dim": text_dim, "semantic_dim": semantic_dim,
                            "attention": attention, "window": window, **overrides})
    return make


PRESETS: dict[str, Callable[..., DiTConfig]] = {
    "tiny": _preset(dim=32, layers=2, heads=2, ffn_dim=64, freq_dim=32),
    "toy": _preset(dim=128, layers=4, heads=4, ffn_dim=512, freq_dim=128),  # ~1.3 M: trains on 2 CPU cores
    "wan-1.3b": _preset(dim=1536, layers=30, heads=12, ffn_dim=8960, freq_dim=256),
    "wan-14b": _preset(dim=5120, layers=40, heads=40, ffn_dim=13824, freq_dim=256),
}


def preset(name: str, **kwargs) -> DiTConfig:
    """The DiTConfig of preset ``name``; unknown names are a ConfigError listing the choices."""
    if name not in PRESETS:
        raise ConfigError(f"unknown DiT preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name](**kwargs)

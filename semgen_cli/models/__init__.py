"""semgen's networks: the DiT of both stages (``dit``, its layers in ``blocks``), its attention kernels (``attention``),
the semantic compressor (``compressor``), Wan2.1 weight loading (``wan``) and size presets
(``presets``). Pure ``nn.Module``s: no training logic, no noise process, no device literals."""

from semgen_cli.models.compressor import Compressor, CompressorConfig
from semgen_cli.models.dit import DiT, DiTConfig, semantic_latent_times, semantic_times_from_fps
from semgen_cli.models.presets import PRESETS, preset

__all__ = [
    "DiT",
    "DiTConfig",
    "Compressor",
    "CompressorConfig",
    "PRESETS",
    "preset",
    "semantic_latent_times",
    "semantic_times_from_fps",
]

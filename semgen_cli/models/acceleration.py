"""Speed knobs of the DiT that change no number a user asked for: which SDPA kernel attention
runs on (`--attention-backend`, through `torch.nn.attention.sdpa_kernel`) and regional
compilation (`--compile`: each DiT block `torch.compile`d in place, as diffusers and torchtitan
compile the repeated block rather than the whole model: one compiled graph serves every layer,
and the state_dict keys stay the same).

Both apply to training (train-latent, train-semantic) and `generate`. The paper does not specify
kernels; the DiT's attention (`semgen_cli.models.attention`, full or shifted windows, paper §3.4)
is plain `F.scaled_dot_product_attention`, so every backend computes the same attention.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from semgen_cli.errors import ConfigError

ATTENTION_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")
"""auto lets PyTorch pick per call; the others pin one SDPA kernel."""
_CUDA_ONLY = ("flash", "cudnn", "efficient")


def check_attention_backend(name: str, device: torch.device | str | None = None) -> None:
    """ConfigError (one line) for an unknown backend, or a CUDA kernel asked for off CUDA.
    `device` is where the model runs (default: CUDA when available)."""
    if name not in ATTENTION_BACKENDS:
        raise ConfigError(f"--attention-backend {name!r}: must be one of {', '.join(ATTENTION_BACKENDS)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = str(device).split(":")[0]
    if name in _CUDA_ONLY and kind != "cuda":
        raise ConfigError(f"--attention-backend {name}: needs CUDA (this runs on {kind}); use auto or math")


@contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Every SDPA call inside (forward, backward, recomputation, sampling) uses the kernel `name`;
    "auto" changes nothing. A kernel that cannot run an attention call is a one-line error."""
    if name == "auto":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
              "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]
    try:
        with sdpa_kernel([kernel]):
            yield
    except RuntimeError as err:
        if "No available kernel" not in str(err) and "No viable backend" not in str(err):
            raise
        raise ConfigError(f"--attention-backend {name}: this kernel cannot run the model's attention here "
                          f"({str(err).splitlines()[0][:120]}); use auto") from None


def compile_blocks(model: nn.Module, enabled: bool = True) -> int:
    """`torch.compile` each DiT block of `model` in place (regional compilation) when `enabled`;
    returns how many were compiled. Parameters, state_dict keys, FSDP sharding and gradient
    checkpointing are unchanged."""
    if not enabled:
        return 0
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise ConfigError("--compile: the model has no DiT blocks to compile")
    for block in blocks:
        block.compile()
    return len(blocks)

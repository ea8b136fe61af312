"""Memory and time: what a length will cost (estimated before anything loads) and what each stage
took (measured), shared by `semgen generate` and the benchmarks (benchmarks/*.py).

Measured memory is CUDA's ``max_memory_allocated`` on a GPU and the process's peak resident set
on the CPU (:class:`MemoryMeter`); :class:`Stages` pairs it with wall time per named stage.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from typing import TYPE_CHECKING

from semgen_cli.errors import ConfigError

if TYPE_CHECKING:
    from semgen_cli.runs import LatentRun
    from semgen_cli.steps.generate import GenerateConfig, Resolved

ACTIVATION_FACTOR = 2.5
"""Peak memory per counted byte of one DiT block's tensors, chosen so that the estimate is at or
above what the bundled toy pipeline grew by on CPU (float32): 20 s, stage 1 41 MiB estimated /
39 measured, stage 2 17 / 17; 120 s, stage 1 244 / 212, stage 2 105 / 51."""


def length_memory(elements: int, tokens: int, dit: dict, cfg: bool) -> int:
    """Bytes one sampling stage holds that grow with the length: the latents of the Euler loop
    (state, noise, a CFG batch and its velocities: 8 copies) and one block's activations for the
    CFG batch (residual, q, k, v, attention out and norms: 6·dim; feed-forward: 2·ffn_dim), as
    float32. Attention runs through a fused kernel (no token × token matrix)."""
    batch = 2 if cfg else 1
    block = batch * tokens * (6 * int(dit["dim"]) + 2 * int(dit["ffn_dim"]))
    return int(4 * (8 * elements + ACTIVATION_FACTOR * block))


def format_bytes(nbytes: int) -> str:
    """MiB below 256 MiB, GiB up to a TiB, TiB beyond."""
    if nbytes >= 2**40:
        return f"{nbytes / 2**40:.4g} TiB"
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**28 else f"{nbytes / 2**20:.0f} MiB"


def available_memory(device) -> tuple[int, str]:
    """(bytes, what) a generation on `device` may use: the GPU's total memory, or the memory
    Linux reports available (MemAvailable) on the CPU; (0, "") where it cannot be told."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"{device} total"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    return 0, ""


def estimate_cost(r: Resolved, cfg: GenerateConfig) -> None:
    """What the length costs, before any of it is allocated: tokens per step and memory; full
    attention grows with the square of the length, so a warning says so."""
    lat, sem = r.lat, r.sem
    C, T, h, w = r.latent_shape
    pt, ph, pw = (int(v) for v in lat.dit["patch"])
    Ts, (hs, ws) = r.semantic_tokens, r.semantic_grid
    n1 = (T // pt) * (h // ph) * (w // pw) + Ts * hs * ws  # latent + in-context semantic tokens
    n2 = 0
    memory = length_memory(C * T * h * w, n1, lat.dit, cfg.latent_cfg != 1)
    if r.plan_source == "stage 2":
        sp = sem.dit["patch"]
        n2 = (Ts // int(sp[0])) * (hs // int(sp[1])) * (ws // int(sp[2]))
        memory = max(memory, length_memory(r.channels * Ts * hs * ws, n2, sem.dit, cfg.semantic_cfg != 1))
    if r.max_seconds is not None and r.seconds > 10 * r.max_seconds:
        r.warnings.append(
            f"--seconds {r.seconds:g} is {r.seconds / r.max_seconds:.0f}× the trained length: stage 2 attends over {n2} tokens at once "
            f"(its time grows with the square of the length), estimated peak memory {format_bytes(memory)} beyond the models"
        )
    if (cfg.attention or lat.dit["attention"]) == "full":
        r.warnings += full_attention_cost(lat, n1)
    r.memory_bytes, r.tokens, r.stage1_tokens = memory, (n2, n1), n1


def full_attention_cost(lat: LatentRun, tokens: int) -> list[str]:
    """A warning when full attention runs over more tokens than one training window held: the
    attention of every layer costs tokens² (time; memory too where SDPA has no fused kernel)."""
    _, h, w = (int(v) for v in lat.latent_shape)
    pt, ph, pw = (int(v) for v in lat.dit["patch"])
    window = lat.window or {}
    trained = int(window.get("latents", 1)) // pt * (h // ph) * (w // pw)
    trained += int(window.get("semantic_tokens", 0)) * math.prod(int(v) for v in (lat.semantic_grid or [0, 0])[:2])
    if tokens <= trained:
        return []
    return [f"full attention over {tokens} tokens per layer, {(tokens / trained) ** 2:.3g}× the attention cost of the "
            f"{trained} tokens of a {float(window.get('seconds', 0)):g} s training window (it grows with the square of the length; "
            "swin attention grows linearly)"]


def check_memory(r: Resolved, device) -> None:
    """Refuse, before any model loads, a length whose estimated memory exceeds the device's."""
    have, what = available_memory(device)
    if have and r.memory_bytes > have:
        raise ConfigError(
            f"--seconds {r.seconds:g} at {r.fps:g} fps and {r.size[0]}x{r.size[1]}: needs an estimated {format_bytes(r.memory_bytes)} of memory beyond the models, more than the "
            f"{format_bytes(have)} of {what}; ask for fewer seconds"
        )


class MemoryMeter:
    """Peak memory of a stage. CUDA: ``torch.cuda.max_memory_allocated`` after a reset. CPU: the
    process's peak resident set (``VmHWM``), reset at each stage start through
    ``/proc/self/clear_refs`` (after ``malloc_trim``) where Linux allows it, else ``ru_maxrss``
    (the peak since the process started)."""

    def __init__(self, device) -> None:
        import torch

        self.cuda = torch.device(device).type == "cuda"
        self.kind = "cuda max_memory_allocated" if self.cuda else "peak RSS (VmHWM)"
        self.base = 0

    def start(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        malloc_trim()  # hand freed heap back to the OS, so what this stage allocates shows as RSS growth
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.kind = "peak RSS since start (ru_maxrss)"
        self.base = status_kb("VmRSS") * 1024

    def peak(self) -> dict[str, int]:
        """{"peak": bytes, "above_start": bytes} since `start`."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = status_kb("VmHWM") * 1024 or peak_rss()
        return {"peak": int(peak), "above_start": int(max(0, peak - self.base))}


def malloc_trim() -> None:
    """Hand the C heap's free memory back to the OS (glibc on Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def status_kb(key: str) -> int:
    """A kB field of /proc/self/status (VmRSS, VmHWM, …); 0 where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss() -> int:
    """The process's peak resident set since it started, in bytes (``ru_maxrss``)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


class Stages:
    """Wall time and peak memory per named stage: ``begin(name)`` … ``end()``."""

    def __init__(self, device) -> None:
        self.meter = MemoryMeter(device)
        self.seconds: dict[str, float] = {}
        self.memory: dict[str, dict[str, int]] = {}
        self._name, self._t0 = None, 0.0

    def begin(self, name: str) -> None:
        self.meter.start()
        self._name, self._t0 = name, time.perf_counter()

    def end(self) -> None:
        if self.meter.cuda:
            import torch

            torch.cuda.synchronize()
        self.seconds[self._name] = time.perf_counter() - self._t0
        self.memory[self._name] = self.meter.peak()

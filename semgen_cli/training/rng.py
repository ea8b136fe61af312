"""Every RNG a training step can touch, as JSON-encodable state.

Owns the python, numpy, torch (CPU and CUDA) RNG states and the step's `torch.Generator`: written
into `state.json` with each checkpoint, restored on resume (so N steps + resume + M steps replays
N+M steps exactly), seeded at the start of a run, and kept still around callbacks that sample.
"""

from __future__ import annotations

import base64
import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG a step can touch, JSON-encodable."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None,
        "generator": _b64(generator.get_state()),
    }


def _set_rng_state(state: dict[str, Any], generator: torch.Generator | None) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(_unb64(state["torch"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])
    if generator is not None:
        generator.set_state(_unb64(state["generator"]))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def _rng_preserved(generator: torch.Generator) -> Iterator[None]:
    """Callbacks (sampling videos) must not move the RNGs, or a resumed run would diverge."""
    state = _rng_state(generator)
    try:
        yield
    finally:
        _set_rng_state(state, generator)

"""Rectified flow: interpolation, velocity target, timestep sampling, loss and the Euler sampler.

Paper §3.1 (eqs. 1-4): ``z_t = (1 - t) z0 + t eps`` with ``t`` in [0, 1] (0 = data, 1 = noise),
the network regresses ``v = eps - z0``, and sampling integrates ``dz = v dt`` with Euler steps
from ``t = 1`` to ``t = 0``. DESIGN §2 adds logit-normal training timesteps with a
resolution/dimension-dependent shift (SD3; RAE's ``sqrt(N / 4096)`` rule), CFG by dropping the
text, and RAE-style noise on the semantic condition (§3.2).

These are free functions that know nothing about the model (the DiT pattern
``training_losses(model, x, t, kwargs)``): ``model_fn(z_t, t, **cond) -> v``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

ModelFn = Callable[..., torch.Tensor]


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) matching ``like``'s rank."""
    t = torch.as_tensor(t, device=like.device, dtype=like.dtype)
    return t.reshape(t.shape + (1,) * (like.ndim - t.ndim))


def interpolate(z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The point ``(1 - t) z0 + t eps`` on the straight path; ``t`` (B,) or scalar."""
    t = _bcast(t, z0)
    return (1 - t) * z0 + t * eps


def velocity_target(z0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``d z_t / dt = eps - z0``, what the model predicts."""
    return eps - z0


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 / RAE timestep shift ``s t / (1 + (s - 1) t)``: s > 1 moves mass towards noise."""
    return shift * t / (1 + (shift - 1) * t)


def dimension_shift(num_elements: int, base: int = 4096) -> float:
    """RAE's dimension-dependent shift ``sqrt(num_elements / base)`` (elements of one sample), never
    below 1: the rule is for spaces larger than RAE's base, and a shift below 1 would move the
    training timesteps towards the data end for small spaces (a toy stage 2 gets about 0.2)."""
    return max(1.0, math.sqrt(num_elements / base))


def sample_timesteps(
    n: int,
    generator: torch.Generator | None = None,
    shift: float = 1.0,
    mean: float = 0.0,
    std: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` training timesteps: logit-normal ``sigmoid(N(mean, std))``, then shifted -> (n,) in (0, 1)."""
    gen_device = generator.device if generator is not None else device
    u = torch.randn(n, generator=generator, device=gen_device) * std + mean
    t = shift_timesteps(torch.sigmoid(u), shift)
    return t.clamp(1e-6, 1 - 1e-6).to(device) if device is not None else t.clamp(1e-6, 1 - 1e-6)


def flow_loss(model_fn: ModelFn, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, *, motion_weight: float = 0.0,
              mask: torch.Tensor | None = None, metrics: dict | None = None, **cond) -> torch.Tensor:
    """Conditional flow-matching loss ``mean || model_fn(z_t, t, **cond) - (eps - z0) ||^2``, the
    objective of both stages (computed in float32).

    Options: `mask` (broadcastable to `z0`; e.g. (B, 1, T, 1, 1) for the real tokens of a padded
    batch) averages over the positions it marks only; `motion_weight` α > 0 weights each position
    by ``1 + α·m`` (`motion_weights`) and divides by the mean weight. `metrics`, when given, gets
    the plain ``mse`` and, with motion weighting, the ``weighted_mse`` as floats."""
    v = model_fn(interpolate(z0, eps, t), t, **cond)
    err = (v.float() - velocity_target(z0, eps).float()).square()
    if mask is not None:
        m = mask.to(err.dtype).expand_as(err)
        loss = (err * m).sum() / m.sum()
    else:
        loss = err.mean()
    if metrics is not None:
        metrics["mse"] = float(loss.detach())
    if motion_weight:
        w = motion_weights(z0.float(), motion_weight)
        if mask is not None:
            w = w * mask.to(w.dtype)
            loss = (err * w).sum() / w.expand_as(err).sum()
        else:
            loss = (err * w).mean() / w.mean()
        if metrics is not None:
            metrics["weighted_mse"] = float(loss.detach())
    return loss


def motion_weights(z0: torch.Tensor, alpha: float, cap: float = 10.0) -> torch.Tensor:
    """Per-position loss weights (B, 1, T, h, w) that favour what moves (not in the paper).

    m is the norm over channels of a latent position's change from the frame before and to the
    frame after (the larger of the two), divided by its mean over the batch, and capped at `cap`
    so a near-still batch does not blow noise up; the weight is 1 + alpha·m. Still regions (the
    background, and a VAE's fixed border pattern) keep weight about 1; an object that moves gets
    more. Why: in small toy runs the loss is spent on the flat background, and stage 1 renders a
    moving object in one surge per latent frame."""
    if z0.shape[2] < 2:
        return torch.ones_like(z0[:, :1])
    d = (z0[:, :, 1:] - z0[:, :, :-1]).norm(dim=1, keepdim=True)  # (B, 1, T-1, h, w)
    pad = torch.zeros_like(d[:, :, :1])
    m = torch.maximum(torch.cat([pad, d], 2), torch.cat([d, pad], 2))  # into / out of each frame
    m = (m / m.mean().clamp_min(1e-8)).clamp_max(cap)
    return 1 + alpha * m


def drop_text(text: torch.Tensor, mask: torch.Tensor | None, p: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Classifier-free-guidance dropout: with probability `p` a sample's text becomes zeros with an
    all-True mask (no mask for Wan's padding), the same "no text" that sampling uses for the
    unconditional branch."""
    drop = torch.rand(text.shape[0], generator=generator, device=generator.device).to(text.device) < p
    text = torch.where(drop[:, None, None], torch.zeros_like(text), text)
    return text, None if mask is None else torch.where(drop[:, None], torch.ones_like(mask), mask)


def noise_condition(
    z: torch.Tensor, sigma_max: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RAE-style noise on a condition: ``z + sigma * eps`` with ``sigma ~ U[0, sigma_max]`` per
    sample -> (noisy z, sigma (B,)). At inference pass a fixed sigma to the model instead."""
    B = z.shape[0]
    sigma = torch.rand(B, generator=generator, device=generator.device if generator is not None else z.device)
    sigma = sigma.to(z.device) * sigma_max
    eps = torch.randn(z.shape, generator=generator, device=generator.device if generator is not None else z.device)
    return z + _bcast(sigma, z) * eps.to(z.device, z.dtype), sigma


def sampling_timesteps(steps: int, shift: float = 1.0, device=None) -> torch.Tensor:
    """``steps + 1`` times from 1 to 0 (uniform, then shifted) -> (steps + 1,)."""
    return shift_timesteps(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


def _batch_conditions(cond: dict, uncond: dict) -> dict | None:
    """Concatenate cond and uncond along dim 0 (condition tensors are batch-first: pass
    ``semantic_times`` as (B, Ts)); keys missing from uncond are shared; non-tensors equal in
    both pass through. None if some pair cannot be batched (e.g. texts of different lengths)."""
    out = {}
    for key, c in cond.items():
        u = uncond.get(key, c)
        if not isinstance(c, torch.Tensor) and c is u:
            out[key] = c
        elif isinstance(c, torch.Tensor) and isinstance(u, torch.Tensor) and c.shape[1:] == u.shape[1:]:
            out[key] = torch.cat([c, u])
        else:
            return None
    extra = set(uncond) - set(cond)
    if extra:
        raise ValueError(f"uncond has keys {sorted(extra)} that cond lacks")
    return out


@torch.no_grad()
def euler_sample(
    model_fn: ModelFn,
    noise: torch.Tensor,
    steps: int,
    shift: float = 1.0,
    cfg_scale: float = 1.0,
    cond: dict | None = None,
    uncond: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Integrate ``dz = v dt`` from ``t = 1`` (``noise``) to ``t = 0`` in ``steps`` Euler steps.

    With ``cfg_scale != 1`` and ``uncond`` given, each step evaluates the conditional and the
    unconditional branches in one batch and uses ``v_u + cfg_scale (v_c - v_u)``; with
    ``cfg_scale == 1`` only the conditional branch runs. ``progress(step, steps)`` is called
    after every step.
    """
    cond = cond or {}
    use_cfg = uncond is not None and cfg_scale != 1.0
    batched = _batch_conditions(cond, uncond) if use_cfg else None
    times = sampling_timesteps(steps, shift, device=noise.device)
    z = noise
    B = z.shape[0]
    for i in range(steps):
        t = times[i].expand(B)
        if not use_cfg:
            v = model_fn(z, t, **cond)
        elif batched is not None:
            v_c, v_u = model_fn(torch.cat([z, z]), torch.cat([t, t]), **batched).chunk(2)
            v = v_u + cfg_scale * (v_c - v_u)
        else:
            v_c = model_fn(z, t, **cond)
            v_u = model_fn(z, t, **{**cond, **uncond})
            v = v_u + cfg_scale * (v_c - v_u)
        z = z + (times[i + 1] - times[i]) * v.to(z.dtype)
        if progress is not None:
            progress(i + 1, steps)
    return z

"""Rectified flow free functions (paper §3.1, DESIGN §2)."""

from __future__ import annotations

import math

import pytest
import torch

from semgen_cli import flow


def test_interpolate_endpoints_and_target():
    z0, eps = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    torch.testing.assert_close(flow.interpolate(z0, eps, torch.zeros(3)), z0)
    torch.testing.assert_close(flow.interpolate(z0, eps, torch.ones(3)), eps)
    torch.testing.assert_close(flow.interpolate(z0, eps, torch.full((3,), 0.25)), 0.75 * z0 + 0.25 * eps)
    torch.testing.assert_close(flow.velocity_target(z0, eps), eps - z0)
    # the target is the time derivative of the path
    t = torch.full((3,), 0.4)
    d = (flow.interpolate(z0, eps, t + 1e-3) - flow.interpolate(z0, eps, t - 1e-3)) / 2e-3
    torch.testing.assert_close(d, eps - z0, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (4, 1.0), (7, 3.0)])
def test_euler_recovers_z0_on_the_exact_velocity_field(steps, shift):
    z0 = torch.randn(2, 3, 5)
    noise = torch.randn(2, 3, 5)

    def exact(z, t):  # the straight-path velocity through z at time t: (z - z0) / t
        return (z - z0) / t.view(-1, 1, 1)

    torch.testing.assert_close(flow.euler_sample(exact, noise, steps, shift=shift), z0, atol=1e-5, rtol=1e-5)
    # a constant field eps - z0 is integrated exactly as well
    const = lambda z, t: noise - z0  # noqa: E731
    torch.testing.assert_close(flow.euler_sample(const, noise, steps, shift=shift), z0, atol=1e-5, rtol=1e-5)


def test_euler_progress_and_schedule():
    seen = []
    flow.euler_sample(lambda z, t: z, torch.zeros(1, 2), 5, progress=lambda i, n: seen.append((i, n)))
    assert seen == [(i, 5) for i in range(1, 6)]
    ts = flow.sampling_timesteps(10, shift=3.0)
    assert ts[0] == 1.0 and ts[-1] == 0.0 and bool((ts[1:] < ts[:-1]).all())


def test_timestep_distribution_and_shift():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_timesteps(20000, generator=g)
    assert t.shape == (20000,) and bool(((t > 0) & (t < 1)).all())
    assert abs(t.median().item() - 0.5) < 0.02  # logit-normal(0, 1) is symmetric around 0.5
    shifted = flow.sample_timesteps(20000, generator=torch.Generator().manual_seed(0), shift=3.0)
    assert bool(((shifted > 0) & (shifted < 1)).all()) and shifted.mean() > t.mean()
    grid = torch.linspace(0, 1, 101)
    for s in (0.5, 1.0, 2.0, 4.0):
        y = flow.shift_timesteps(grid, s)
        assert bool((y[1:] > y[:-1]).all()) and y[0] == 0 and y[-1] == 1
    torch.testing.assert_close(flow.shift_timesteps(grid, 1.0), grid)
    assert flow.dimension_shift(4096) == 1.0 and flow.dimension_shift(16384) == 2.0
    assert math.isclose(flow.dimension_shift(8192, base=2048), 2.0)


def test_flow_loss_is_zero_for_the_true_velocity():
    z0, eps, t = torch.randn(4, 3), torch.randn(4, 3), torch.rand(4)
    oracle = lambda zt, t, **c: eps - z0  # noqa: E731
    assert flow.flow_loss(oracle, z0, t, eps).item() == 0.0
    seen = {}

    def model(zt, t, text=None):
        seen["text"] = text
        return torch.zeros_like(zt)

    loss = flow.flow_loss(model, z0, t, eps, text="a prompt")
    torch.testing.assert_close(loss, ((eps - z0) ** 2).mean())
    assert seen["text"] == "a prompt"


def _linear_model(calls):
    def model(z, t, text, semantic=None):
        calls.append(z.shape[0])
        return z * 0.1 + text.mean(-1, keepdim=True) + (0 if semantic is None else semantic)

    return model


def test_cfg_scale_one_equals_conditional():
    noise, text, null = torch.randn(2, 3), torch.randn(2, 4), torch.zeros(2, 4)
    calls = []
    a = flow.euler_sample(_linear_model(calls), noise, 4, cond={"text": text}, uncond={"text": null}, cfg_scale=1.0)
    b = flow.euler_sample(_linear_model([]), noise, 4, cond={"text": text})
    torch.testing.assert_close(a, b)
    assert calls == [2] * 4  # one conditional pass per step, no unconditional one


def test_cfg_batches_cond_and_uncond():
    noise, text, null, sem = torch.randn(2, 3), torch.randn(2, 4), torch.zeros(2, 4), torch.randn(2, 3)
    calls = []
    out = flow.euler_sample(_linear_model(calls), noise, 3, cfg_scale=4.0,
                            cond={"text": text, "semantic": sem}, uncond={"text": null})
    assert calls == [4] * 3  # cond + uncond in one batch; semantic shared by both branches
    # reference: guided velocity v_u + s (v_c - v_u), step by step
    model = _linear_model([])
    ts = flow.sampling_timesteps(3)
    z = noise
    for i in range(3):
        v_c, v_u = model(z, ts[i], text, sem), model(z, ts[i], null, sem)
        z = z + (ts[i + 1] - ts[i]) * (v_u + 4.0 * (v_c - v_u))
    torch.testing.assert_close(out, z)


def test_cfg_falls_back_to_two_passes_for_unbatchable_conditions():
    noise, text, null = torch.randn(2, 3), torch.randn(2, 5, 4), torch.zeros(2, 1, 4)
    calls = []
    model = lambda z, t, text: (calls.append(z.shape[0]), z + text.mean((1, 2))[:, None])[1]  # noqa: E731
    flow.euler_sample(model, noise, 2, cfg_scale=2.0, cond={"text": text}, uncond={"text": null})
    assert calls == [2, 2, 2, 2]


def test_noise_condition():
    z = torch.randn(64, 3, 4)
    noisy, sigma = flow.noise_condition(z, 0.5, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (64,) and bool(((sigma >= 0) & (sigma <= 0.5)).all())
    assert noisy.shape == z.shape
    clean, zero = flow.noise_condition(z, 0.0)
    torch.testing.assert_close(clean, z)

"""Rectified flow (iris.flow) and the samplers (iris.sampling)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

from iris.flow import interpolate, loss_weight, rectified_flow_loss, sample_t
from iris.models.generator import IrisGenerator, TextCondition
from iris.sampling import cfg_combine, flow_timesteps, predicted_x0, sample

# ------------------------------------------------------------------------------------------ flow basics


def test_interpolate_endpoints_and_midpoint():
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    assert torch.equal(interpolate(z0, noise, torch.zeros(3)), z0)
    assert torch.equal(interpolate(z0, noise, torch.ones(3)), noise)
    mixed = interpolate(z0, noise, torch.tensor([0.0, 0.25, 1.0]))
    assert torch.equal(mixed[0], z0[0]) and torch.equal(mixed[2], noise[2])
    torch.testing.assert_close(mixed[1], 0.75 * z0[1] + 0.25 * noise[1])
    # the velocity target is the time derivative of the path
    z0, noise = z0.double(), noise.double()
    t, dt = torch.full((3,), 0.4, dtype=torch.float64), 1e-3
    deriv = (interpolate(z0, noise, t + dt) - interpolate(z0, noise, t)) / dt
    torch.testing.assert_close(deriv, noise - z0, atol=1e-9, rtol=1e-9)


def test_loss_weight_none_and_snr():
    t = torch.tensor([0.1, 0.5, 0.8, 0.9, 0.999999])
    assert torch.equal(loss_weight(t, "none"), torch.ones(5))
    w = loss_weight(t, "snr")
    torch.testing.assert_close(w[:3], torch.tensor([0.1 / 0.9, 1.0, 4.0]))
    assert w[3] == 5.0 and w[4] == 5.0  # t/(1-t) = 9 and 1e6, clamped to 5
    assert loss_weight(torch.tensor([0.9]), "snr", clamp=20.0).item() == pytest.approx(9.0, rel=1e-5)
    assert torch.all(loss_weight(torch.tensor([0.0, 1.0]), "snr") <= 5.0)
    assert torch.isfinite(loss_weight(torch.tensor([1.0]), "snr")).all()
    with pytest.raises(ValueError, match="weighting"):
        loss_weight(t, "bogus")


def test_sample_t_is_logit_normal():
    g = torch.Generator().manual_seed(0)
    t = sample_t(20000, generator=g)
    assert t.shape == (20000,)
    assert torch.all((t > 0) & (t < 1))
    assert abs(t.median().item() - 0.5) < 0.02
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item()) < 0.03 and abs(logit.std().item() - 1.0) < 0.03
    shifted = sample_t(20000, mean=1.0, std=0.5, generator=torch.Generator().manual_seed(1))
    logit = torch.log(shifted / (1 - shifted))
    assert abs(logit.mean().item() - 1.0) < 0.03 and abs(logit.std().item() - 0.5) < 0.03
    a = sample_t(10, generator=torch.Generator().manual_seed(3))
    b = sample_t(10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_rectified_flow_loss_of_the_exact_velocity_is_zero():
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9])
    exact = lambda zt, tt: noise - z0
    assert rectified_flow_loss(exact, z0, t, noise).item() == 0.0
    zero = lambda zt, tt: torch.zeros_like(zt)
    expected = (noise - z0).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(rectified_flow_loss(zero, z0, t, noise), expected.mean())
    torch.testing.assert_close(rectified_flow_loss(zero, z0, t, noise, weighting="snr"),
                               (expected * loss_weight(t, "snr")).mean())


# ---------------------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("steps", [1, 2, 4, 10])
def test_flow_timesteps_monotone(steps):
    ts = flow_timesteps(steps)
    assert len(ts) == steps + 1
    assert ts[0] == 1.0 and ts[-1] == 0.0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert ts == pytest.approx([1 - i / steps for i in range(steps + 1)])
    shifted = flow_timesteps(steps, shift=3.0)
    assert shifted[0] == pytest.approx(1.0) and shifted[-1] == 0.0
    assert all(a > b for a, b in zip(shifted, shifted[1:]))
    assert all(s > u for s, u in zip(shifted[1:-1], ts[1:-1]))  # shift > 1 spends more steps at high noise
    low = flow_timesteps(steps, shift=0.5)
    assert all(s < u for s, u in zip(low[1:-1], ts[1:-1]))


def test_flow_timesteps_partial_start():
    ts = flow_timesteps(4, start=0.6)
    assert ts[0] == pytest.approx(0.6) and ts[-1] == 0.0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    # `start` is warped with the rest: the first time is shift * start / (1 + (shift - 1) * start)
    warped = flow_timesteps(4, shift=3.0, start=0.6)
    assert warped[0] == pytest.approx(3 * 0.6 / (1 + 2 * 0.6)) and warped[-1] == 0.0
    assert all(a > b for a, b in zip(warped, warped[1:]))


# ---------------------------------------------------------------------------------------------- samplers


def _straight_path(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    calls = []

    def velocity(z, t, i):  # exact field of the straight path to x0: (z - x0) / t, = noise - x0 on the path
        calls.append((t, i))
        return (z - x0) / t

    return x0, noise, velocity, calls


@pytest.mark.parametrize("sampler", ["euler", "heun", "consistency"])
@pytest.mark.parametrize("steps", [1, 4])
def test_exact_velocity_recovers_x0(sampler, steps):
    x0, noise, velocity, calls = _straight_path()
    noise_calls = []

    def noise_fn(i):
        noise_calls.append(i)
        return noise

    out = sample(velocity, noise.clone(), flow_timesteps(steps, shift=2.0), sampler, noise_fn=noise_fn)
    torch.testing.assert_close(out, x0, atol=1e-10, rtol=1e-10)
    expected_calls = {"euler": steps, "heun": 2 * steps - 1, "consistency": steps}[sampler]
    assert len(calls) == expected_calls
    assert [i for _, i in calls][0] == 0 and calls[-1][1] == steps - 1
    assert len(noise_calls) == (steps - 1 if sampler == "consistency" else 0)


def test_heun_is_second_order_and_euler_first_order():
    # dz/dt = z from t = 1 to 0: z(0) = z(1) / e
    z1 = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    exact = math.exp(-1.0)
    err = {}
    for sampler in ("euler", "heun"):
        for steps in (8, 16):
            out = sample(lambda z, t, i: z, z1.clone(), flow_timesteps(steps), sampler)
            err[sampler, steps] = abs(out.item() - exact)
    assert err["euler", 8] / err["euler", 16] == pytest.approx(2.0, rel=0.15)
    assert err["heun", 8] / err["heun", 16] == pytest.approx(4.0, rel=0.25)
    assert err["heun", 16] < err["euler", 16] / 5


def test_on_step_can_replace_the_state():
    x0, noise, velocity, _ = _straight_path()
    seen = []

    def on_step(i, z):
        seen.append(i)
        return torch.zeros_like(z) if i == 1 else None

    still = lambda z, t, i: torch.zeros_like(z)
    out = sample(still, noise.clone(), flow_timesteps(3), "euler", on_step=on_step)
    assert seen == [0, 1, 2]
    assert torch.count_nonzero(out) == 0  # replaced at step 1, velocity 0 afterwards


def test_unknown_sampler_and_cfg_combine():
    with pytest.raises(ValueError, match="sampler"):
        sample(lambda z, t, i: z, torch.zeros(1), [1.0, 0.0], "ddim")
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert cfg_combine(c, u, 1.0).item() == 2.0
    assert cfg_combine(c, u, 0.0).item() == 1.0
    assert cfg_combine(c, u, 3.0).item() == 4.0
    assert torch.equal(predicted_x0(torch.tensor([1.0]), torch.tensor([2.0]), 0.25), torch.tensor([0.5]))


# ---------------------------------------------------------------------------------------- learning works


def test_short_training_lowers_the_flow_loss():
    torch.manual_seed(0)
    cfg = tiny_config(core_layers=1, max_iterations=4)
    gen = IrisGenerator(cfg)  # zero-initialised output, as training starts
    g = torch.Generator().manual_seed(0)
    n = 8
    # a tiny latent set with structure to learn: per-sample constant channels plus a little texture
    latents = torch.randn(n, 4, 1, 1, generator=g) + 0.3 * torch.randn(n, 4, 4, 4, generator=g)
    ids = torch.randint(0, 50, (n, 6), generator=g)
    vocab = torch.randn(50, cfg.text_dim, generator=g)
    text = TextCondition(vocab[ids])  # "text" from random tokens, fixed per latent
    eval_t = torch.rand(n, generator=g) * 0.9 + 0.05
    eval_noise = torch.randn(latents.shape, generator=g)

    def velocity_fn(text_cond):  # one core iteration keeps 60 steps cheap on a busy CPU
        return lambda zt, t: gen(zt, t, text_cond, 1, state_generator=torch.Generator().manual_seed(0))

    def eval_loss() -> float:
        with torch.no_grad():
            return rectified_flow_loss(velocity_fn(text), latents, eval_t, eval_noise).item()

    before = eval_loss()
    opt = torch.optim.AdamW(gen.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(40):  # ~0.25x the initial loss after 40 steps, ~0.17x after 60
        t = sample_t(n, generator=g)
        noise = torch.randn(latents.shape, generator=g)
        loss = rectified_flow_loss(velocity_fn(text), latents, t, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert math.isfinite(after)
    assert after < 0.5 * before, (before, after)


def test_guidance_interval_skips_guidance_above_max_t():
    from iris.sampling import guidance_at, network_evaluations, velocity_times

    assert guidance_at(1.0, 3.0) == 3.0  # max_t 1: every step guided
    assert guidance_at(1.0, 3.0, 0.9) == 1.0 and guidance_at(0.75, 3.0, 0.9) == 3.0
    assert guidance_at(1.0, 0.0, 0.9) == 0.0  # the negative prompt alone stays so
    ts = flow_timesteps(4)
    assert velocity_times("euler", ts) == ts[:-1]
    assert velocity_times("heun", ts) == [1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25]
    assert network_evaluations("euler", ts, 3.0) == 8 and network_evaluations("euler", ts, 3.0, 0.9) == 7
    assert network_evaluations("heun", ts, 3.0, 0.9) == 13 and network_evaluations("euler", ts, 1.0, 0.9) == 4

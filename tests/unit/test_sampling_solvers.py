"""Solvers and the sampling loop: Euler vs diffusers' scheduler.step, convergence order of the
higher-order solvers on an exactly solvable flow, CFG glue and callbacks."""

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from hunyuan.sampling.loop import guided_velocity, noise_latent, sample_flow, seeded_noise
from hunyuan.sampling.schedule import flow_sigmas, timesteps_for
from hunyuan.sampling.solvers import SOLVERS, evaluations_per_run, make_solver


class StandIn(torch.nn.Module):
    """A small timestep-conditioned denoiser standing in for the DiT."""

    def __init__(self, channels=4):
        super().__init__()
        self.conv = torch.nn.Conv3d(channels, channels, 3, padding=1)
        self.t_proj = torch.nn.Linear(1, channels)

    def forward(self, x, timestep):
        scale = self.t_proj(timestep[:, None] / 1000.0)[:, :, None, None, None]
        return torch.tanh(self.conv(x)) + scale * x


@pytest.mark.parametrize("steps", [1, 4, 13])
def test_euler_loop_equals_diffusers_step_loop(steps):
    torch.manual_seed(0)
    model = StandIn()
    x_init = torch.randn(2, 4, 3, 6, 5)

    sched = FlowMatchEulerDiscreteScheduler(shift=7.0)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    ref = x_init.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            ref = sched.step(model(ref, t.expand(ref.shape[0])), t, ref, return_dict=False)[0]

    sigmas = flow_sigmas(steps, 7.0)
    timesteps = timesteps_for(sigmas)
    seen = []

    def velocity(x, i):
        seen.append(float(timesteps[i]))
        return model(x, timesteps[i].expand(x.shape[0]))

    with torch.no_grad():
        out = sample_flow(velocity, x_init, sigmas, solver="euler")
    assert seen == sched.timesteps.tolist()
    assert torch.equal(out, ref)


def _gaussian_flow(mu: float, c: float):
    """Data x0 ~ N(mu, c^2) per element, x = (1-s) x0 + s eps: the exact velocity is linear in x
    and the ODE maps eps (s=1) to mu + c * eps (s=0)."""

    def velocity_at(x, s):
        var = (1 - s) ** 2 * c**2 + s**2
        centered = x - (1 - s) * mu
        e_eps = s / var * centered
        e_x0 = mu + (1 - s) * c**2 / var * centered
        return e_eps - e_x0

    return velocity_at


def _exact_point(mu, c, eps, s):
    return (1 - s) * mu + math.sqrt((1 - s) ** 2 * c**2 + s**2) * eps


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solver_convergence_order(name):
    """Observed order on grids uniform in log-SNR (where the multistep theory holds)."""
    mu, c = 0.7, 0.3
    velocity_at = _gaussian_flow(mu, c)
    eps = torch.linspace(-2, 2, 9, dtype=torch.float64)
    errors = []
    for points in (32, 64, 128):
        sigmas = torch.sigmoid(-torch.linspace(-4, 4, points, dtype=torch.float64))
        stepper = make_solver(name)
        x = _exact_point(mu, c, eps, float(sigmas[0]))
        for i in range(points - 1):
            x, _ = stepper.step(lambda y, j, s=sigmas: velocity_at(y, float(s[j])), x, sigmas, i)
        errors.append(float((x - _exact_point(mu, c, eps, float(sigmas[-1]))).abs().max()))
    rates = [math.log2(errors[k] / errors[k + 1]) for k in range(2)]
    expected = SOLVERS[name].order
    assert expected - 0.2 < min(rates) and max(rates) < expected + 0.3, (name, errors, rates)


def test_second_order_solvers_beat_euler_on_the_reference_schedule():
    """50 steps of the shift-7 schedule towards unit-scale data (about what the DiT sees)."""
    mu, c = 0.0, 1.5
    velocity_at = _gaussian_flow(mu, c)
    eps = torch.linspace(-2, 2, 9, dtype=torch.float64)
    sigmas = flow_sigmas(50, 7.0).to(torch.float64)

    def run(name):
        x = eps.clone()
        stepper = make_solver(name)
        for i in range(50):
            x, _ = stepper.step(lambda y, j: velocity_at(y, float(sigmas[j])), x, sigmas, i)
        return float((x - (mu + c * eps)).abs().max())

    euler = run("euler")
    assert run("dpmpp_2m") < euler / 3
    assert run("heun") < euler / 3


def test_evaluation_counts():
    calls = []
    for name in sorted(SOLVERS):
        calls.clear()
        sample_flow(lambda x, i: (calls.append(i), torch.zeros_like(x))[1], torch.ones(1, 2), flow_sigmas(6), solver=name)
        assert len(calls) == evaluations_per_run(name, 6), name
    with pytest.raises(ValueError, match="solver='ddim' is not known"):
        make_solver("ddim")


def test_guided_velocity():
    cond = lambda x, i: x + 1.0  # noqa: E731
    uncond = lambda x, i: x * 0.0  # noqa: E731
    assert guided_velocity(cond, uncond, 1.0) is cond
    assert guided_velocity(cond, None, 5.0) is cond
    x = torch.full((2,), 2.0)
    torch.testing.assert_close(guided_velocity(cond, uncond, 3.0)(x, 0), torch.full((2,), 9.0))


def test_callback_sees_every_step_and_can_stop():
    seen = []
    sigmas = flow_sigmas(5)
    sample_flow(lambda x, i: torch.ones_like(x), torch.zeros(1, 3), sigmas, callback=seen.append)
    assert [s.index for s in seen] == list(range(5)) and all(s.total == 5 for s in seen)
    assert seen[-1].sigma_next == 0.0 and seen[0].sigma == 1.0
    # velocity 1 everywhere: x0 prediction at step i is x - sigma_i
    torch.testing.assert_close(seen[2].denoised, seen[1].x - sigmas[2])

    class Stop(Exception):
        pass

    def stop_at_two(info):
        if info.index == 2:
            raise Stop

    calls = []
    with pytest.raises(Stop):
        sample_flow(lambda x, i: (calls.append(i), x)[1], torch.zeros(1), sigmas, callback=stop_at_two)
    assert calls == [0, 1, 2]


def test_noise_latent_and_seeded_noise():
    latent, noise = torch.full((1, 2), 4.0), torch.full((1, 2), -2.0)
    torch.testing.assert_close(noise_latent(latent, noise, 0.25), torch.full((1, 2), 2.5))
    a, b = seeded_noise(42, (1, 16, 2, 3, 4)), seeded_noise(42, (1, 16, 2, 3, 4))
    assert torch.equal(a, b) and a.dtype == torch.float32
    torch.manual_seed(42)
    assert torch.equal(a, torch.randn((1, 16, 2, 3, 4), generator=torch.manual_seed(42)))
    assert not torch.equal(a, seeded_noise(43, (1, 16, 2, 3, 4)))

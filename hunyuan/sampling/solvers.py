"""ODE solvers for rectified-flow sampling.

Model convention (HunyuanVideo, ``flow_reverse``): a latent at noise level sigma is
``x = (1 - sigma) * x0 + sigma * noise`` and the DiT predicts the velocity
``v = dx/dsigma = noise - x0``. So ``x0 = x - sigma * v``.

A solver advances ``x`` from ``sigmas[i]`` to ``sigmas[i+1]``. It asks for velocities through
``velocity(x, j)``: the DiT evaluated at the noise level ``sigmas[j]`` (an index, so that
per-step inputs such as the refined text tokens can be looked up). Solvers only ever evaluate
at schedule points, never between them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

VelocityFn = Callable[[torch.Tensor, int], torch.Tensor]


class Euler:
    """First order, one evaluation per step: the reference sampler of HunyuanVideo."""

    name = "euler"
    order = 1

    def step(self, velocity: VelocityFn, x: torch.Tensor, sigmas: torch.Tensor, i: int):
        """x [B,C,T,H,W] float32 at sigmas[i] -> (x at sigmas[i+1], predicted x0)."""
        v = velocity(x, i).to(x.dtype)
        x_next = x + (sigmas[i + 1] - sigmas[i]) * v
        return x_next, x - sigmas[i] * v


class Heun:
    """Second order (trapezoidal predictor-corrector), two evaluations per step.

    The corrector evaluates at ``sigmas[i+1]``, a schedule point, so per-step inputs exist for
    it. The last step (to sigma 0) is a plain Euler step: the velocity is not defined there.
    """

    name = "heun"
    order = 2

    def step(self, velocity: VelocityFn, x: torch.Tensor, sigmas: torch.Tensor, i: int):
        dt = sigmas[i + 1] - sigmas[i]
        v1 = velocity(x, i).to(x.dtype)
        x_pred = x + dt * v1
        denoised = x - sigmas[i] * v1
        if float(sigmas[i + 1]) == 0.0:
            return x_pred, denoised
        v2 = velocity(x_pred, i + 1).to(x.dtype)
        return x + dt * 0.5 * (v1 + v2), denoised


def _half_log_snr(sigma: float) -> float:
    """lambda = log(alpha / sigma) with alpha = 1 - sigma (-inf at sigma 1, +inf at sigma 0)."""
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log((1.0 - sigma) / sigma)


class DPMSolverPP2M:
    """DPM-Solver++(2M) written for the flow parameterisation: one evaluation per step, second
    order by reusing the previous step's x0 prediction (multistep).

    In data-prediction form with alpha = 1 - sigma and h = lambda_next - lambda:
    ``x_next = (sigma_next/sigma) x - alpha_next (e^-h - 1) D`` where D is x0 (first step, or
    after a step of infinite h) or the 2nd-order extrapolation ``(1 + 1/2r) x0 - 1/2r x0_prev``.
    """

    name = "dpmpp_2m"
    order = 2

    def __init__(self):
        self._prev_x0: torch.Tensor | None = None
        self._prev_h: float | None = None
        self._prev_index: int | None = None

    def step(self, velocity: VelocityFn, x: torch.Tensor, sigmas: torch.Tensor, i: int):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = velocity(x, i).to(x.dtype)
        x0 = x - sigmas[i] * v
        if s_next <= 0.0:
            self._remember(None, None, None)
            return x0, x0
        h = _half_log_snr(s_next) - _half_log_snr(s)
        # e^-h = (alpha sigma_next) / (sigma alpha_next), finite even where lambda is infinite.
        exp_neg_h = (1.0 - s) * s_next / (s * (1.0 - s_next))
        d = x0
        usable = self._prev_index == i - 1 and self._prev_h is not None
        if usable and math.isfinite(self._prev_h) and math.isfinite(h) and h > 0:
            half_inv_r = 0.5 * h / self._prev_h
            d = (1.0 + half_inv_r) * x0 - half_inv_r * self._prev_x0
        x_next = (s_next / s) * x - (1.0 - s_next) * (exp_neg_h - 1.0) * d
        self._remember(x0, h, i)
        return x_next, x0

    def _remember(self, x0, h, i) -> None:
        self._prev_x0, self._prev_h, self._prev_index = x0, h, i


SOLVERS: dict[str, type] = {cls.name: cls for cls in (Euler, Heun, DPMSolverPP2M)}


def make_solver(name: str):
    """A fresh solver (multistep solvers keep state, so one per sampling run)."""
    try:
        return SOLVERS[name]()
    except KeyError:
        raise ValueError(f"solver={name!r} is not known; expected one of {sorted(SOLVERS)}") from None


def evaluations_per_run(name: str, steps: int) -> int:
    """How many DiT evaluations (per CFG branch) a run of ``steps`` steps costs."""
    if name not in SOLVERS:
        raise ValueError(f"solver={name!r} is not known; expected one of {sorted(SOLVERS)}")
    return 2 * steps - 1 if name == "heun" else steps

"""The sampling loop as a pure function, plus the guidance glue around the denoiser.

Nothing here knows about the DiT: the caller passes ``velocity(x, i)`` (the DiT at noise level
``sigmas[i]``, with its text and guidance already bound), and ``callback`` for progress,
previews and interruption. True CFG composes two such callables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .schedule import check_sigmas
from .solvers import VelocityFn, make_solver


@dataclass(frozen=True)
class StepInfo:
    """What a step callback sees after step ``index`` (0-based) of ``total``.

    x:        [B,C,T,H,W] float32 latent at ``sigma_next`` (model space)
    denoised: [B,C,T,H,W] float32 predicted clean latent (model space), for previews
    """

    index: int
    total: int
    sigma: float
    sigma_next: float
    x: torch.Tensor
    denoised: torch.Tensor


StepCallback = Callable[[StepInfo], None]


def sample_flow(
    velocity: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    solver: str = "euler",
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate the flow ODE along ``sigmas`` starting from ``x`` at ``sigmas[0]``.

    x:       [B,C,T,H,W] latent in model space at noise level sigmas[0] (kept in float32)
    sigmas:  [S+1] schedule, non-increasing; usually ends at 0
    Returns: [B,C,T,H,W] float32 latent at sigmas[-1].

    ``callback`` runs after every step; raising from it (e.g. an interrupt) stops sampling.
    """
    sigmas = check_sigmas(sigmas).to(x.device)
    stepper = make_solver(solver)
    x = x.to(torch.float32)
    total = len(sigmas) - 1
    for i in range(total):
        x, denoised = stepper.step(velocity, x, sigmas, i)
        if callback is not None:
            callback(StepInfo(i, total, float(sigmas[i]), float(sigmas[i + 1]), x, denoised))
    return x


def guided_velocity(cond: VelocityFn, uncond: VelocityFn | None, cfg: float) -> VelocityFn:
    """True classifier-free guidance: ``v_u + cfg * (v_c - v_u)``.

    Off (a single evaluation per call) when there is no negative or cfg == 1, as in the reference.
    """
    if uncond is None or cfg == 1.0:
        return cond

    def velocity(x: torch.Tensor, i: int) -> torch.Tensor:
        v_cond = cond(x, i)
        v_uncond = uncond(x, i)
        return v_uncond + cfg * (v_cond - v_uncond)

    return velocity


def noise_latent(latent: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Bring a clean model-space latent to noise level sigma: ``(1-sigma) x0 + sigma noise``."""
    if latent.shape != noise.shape:
        raise ValueError(f"latent has shape {tuple(latent.shape)} but noise has {tuple(noise.shape)}")
    return (1.0 - sigma) * latent.to(torch.float32) + sigma * noise.to(torch.float32)


def seeded_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Gaussian noise on the CPU drawn the way ComfyUI draws it for a seed (float32).

    A CPU generator seeded with ``seed`` gives the same stream as ``torch.manual_seed(seed)``
    followed by ``torch.randn(shape, generator=...)`` without touching the global RNG.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, dtype=torch.float32, generator=generator, device="cpu")

"""Flow-matching sampling: schedules, ODE solvers, the loop and the DiT-facing glue.

* :mod:`.schedule` — sigma schedules (shift, denoise truncation) and video-size checks
* :mod:`.solvers` — Euler (reference), Heun, DPM-Solver++(2M) for the flow parameterisation
* :mod:`.loop` — ``sample_flow`` (pure loop over a velocity callable), true-CFG glue, noise
"""

from .loop import StepInfo, guided_velocity, noise_latent, sample_flow, seeded_noise
from .schedule import (
    DEFAULT_SHIFT,
    DEFAULT_STEPS,
    check_sigmas,
    check_video_size,
    denoise_start_index,
    flow_sigmas,
    latent_shape,
    timesteps_for,
    video_size,
)
from .solvers import SOLVERS, make_solver

__all__ = [
    "DEFAULT_SHIFT",
    "DEFAULT_STEPS",
    "SOLVERS",
    "StepInfo",
    "check_sigmas",
    "check_video_size",
    "denoise_start_index",
    "flow_sigmas",
    "guided_velocity",
    "latent_shape",
    "video_size",
    "make_solver",
    "noise_latent",
    "sample_flow",
    "seeded_noise",
    "timesteps_for",
]

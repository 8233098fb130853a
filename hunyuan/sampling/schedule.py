"""Flow-matching sigma schedules and the checks on video sizes that go with them.

A schedule is a 1-D float32 tensor ``sigmas[S+1]`` that starts at the noise level of the first
step and ends at 0 (the same shape ComfyUI's SIGMAS sockets carry). Step ``i`` moves the latent
from ``sigmas[i]`` to ``sigmas[i+1]`` and feeds the DiT ``timestep = sigmas[i] * 1000``.
"""

from __future__ import annotations

import torch

from ..vae.config import HUNYUAN_VIDEO_VAE

NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_SHIFT = 7.0
DEFAULT_STEPS = 50
SPATIAL_COMPRESSION = HUNYUAN_VIDEO_VAE.spatial_ratio
SIZE_MULTIPLE = 2 * SPATIAL_COMPRESSION  # 8x VAE downsampling, then the DiT's 2x2 patches


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Apply the flow shift ``s*sigma / (1 + (s-1)*sigma)``; shift > 1 spends more steps at high noise."""
    if shift <= 0:
        raise ValueError(f"shift={shift} must be > 0")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(steps: int = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT, denoise: float = 1.0) -> torch.Tensor:
    """The reference schedule: ``linspace(1, 0, steps+1)`` shifted, truncated for partial denoise.

    The base grid is built in float64 and rounded to float32 before the shift, which is done in
    float32: this reproduces diffusers' FlowMatchEulerDiscreteScheduler bit for bit.

    Returns: sigmas [S'+1] float32, ``S' <= steps`` (``S' < steps`` only when denoise < 1).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    base = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).to(torch.float32)
    sigmas = shift_sigmas(base, float(shift))
    return truncate_for_denoise(sigmas, denoise)


def timesteps_for(sigmas: torch.Tensor) -> torch.Tensor:
    """DiT timesteps (0..1000) for every step of a schedule: [S] float32 (the final 0 is dropped)."""
    return sigmas[:-1].to(torch.float32) * NUM_TRAIN_TIMESTEPS


def denoise_start_index(sigmas: torch.Tensor, denoise: float) -> int:
    """Index of the first step whose noise level is at most ``denoise`` (1.0 -> 0).

    ``denoise`` is the noise level the input latent is brought to before sampling, so 0.3 keeps
    70% of the input video. The start never passes the last real step.
    """
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise={denoise} must be in (0, 1]")
    last = len(sigmas) - 2
    if last < 0:
        raise ValueError(f"sigmas has {len(sigmas)} value(s); a schedule needs at least 2")
    below = (sigmas[:-1] <= denoise + 1e-6).nonzero()
    return min(int(below[0]), last) if len(below) else last


def truncate_for_denoise(sigmas: torch.Tensor, denoise: float) -> torch.Tensor:
    """Drop the steps whose noise level is above ``denoise`` (no-op for denoise = 1)."""
    return sigmas[denoise_start_index(sigmas, denoise):]


def check_sigmas(sigmas: torch.Tensor, name: str = "sigmas") -> torch.Tensor:
    """Validate a schedule from any source (ours or a native sigma node); return it as float32 CPU."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1:
        shape = tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
        raise ValueError(f"{name} must be a 1-D tensor, got {shape}")
    if len(sigmas) < 2:
        raise ValueError(f"{name} has {len(sigmas)} value(s); a schedule needs at least 2 (start and end)")
    sigmas = sigmas.detach().to("cpu", torch.float32)
    if not torch.isfinite(sigmas).all() or (sigmas < 0).any() or (sigmas > 1 + 1e-6).any():
        raise ValueError(f"{name} must lie in [0, 1] for a flow-matching model, got {sigmas.tolist()}")
    if (sigmas[1:] > sigmas[:-1]).any():
        raise ValueError(f"{name} must not increase, got {sigmas.tolist()}")
    return sigmas


def _nearest(value: int, valid) -> str:
    lower = max((v for v in valid if v <= value), default=None)
    upper = min((v for v in valid if v >= value), default=None)
    options = sorted({v for v in (lower, upper) if v is not None and v > 0})
    return " or ".join(str(v) for v in options)


def check_video_size(width: int, height: int, frames: int) -> None:
    """Raise ValueError naming the input, its value and the nearest valid values.

    frames must be 4k+1 (the VAE compresses time by 4 after the first frame); width and height
    must be positive multiples of 16 (8x VAE downsampling, then 2x2 patches).
    """
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
            lo = max(SIZE_MULTIPLE, (int(value) // SIZE_MULTIPLE) * SIZE_MULTIPLE)
            near = _nearest(int(value), [lo, lo + SIZE_MULTIPLE])
            raise ValueError(f"{name}={value} is not a positive multiple of {SIZE_MULTIPLE}; nearest valid: {near}")
    HUNYUAN_VIDEO_VAE.check_frames(frames)


def video_size(latent_shape: tuple[int, ...]) -> dict[str, int]:
    """The inverse of :func:`latent_shape`: ``width``, ``height`` and ``frames`` of a [B, C, T, H, W] latent."""
    t, h, w = latent_shape[-3:]
    return {"width": w * SPATIAL_COMPRESSION, "height": h * SPATIAL_COMPRESSION,
            "frames": HUNYUAN_VIDEO_VAE.frames_out(t)}


def latent_shape(batch: int, width: int, height: int, frames: int, channels: int = 16) -> tuple[int, ...]:
    """Shape of the latent for a video: [B, C, (frames-1)/4+1, height/8, width/8]."""
    check_video_size(width, height, frames)
    return (
        batch,
        channels,
        HUNYUAN_VIDEO_VAE.latent_frames(frames),
        height // SPATIAL_COMPRESSION,
        width // SPATIAL_COMPRESSION,
    )

"""Schedule vs diffusers' FlowMatchEulerDiscreteScheduler, denoise truncation, size validation."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from hunyuan.sampling.schedule import (
    check_sigmas,
    check_video_size,
    denoise_start_index,
    flow_sigmas,
    latent_shape,
    timesteps_for,
)


def _diffusers_schedule(steps: int, shift: float):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    # exactly what HunyuanVideoPipeline passes to retrieve_timesteps
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    return sched.sigmas, sched.timesteps


@pytest.mark.parametrize("steps", [1, 2, 7, 30, 50])
@pytest.mark.parametrize("shift", [7.0, 1.0, 3.5])
def test_schedule_equals_diffusers_bitwise(steps, shift):
    ref_sigmas, ref_timesteps = _diffusers_schedule(steps, shift)
    sigmas = flow_sigmas(steps, shift)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
    assert torch.equal(sigmas, ref_sigmas)
    assert torch.equal(timesteps_for(sigmas), ref_timesteps)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0


def test_shift_concentrates_steps_at_high_noise():
    unshifted, shifted = flow_sigmas(10, 1.0), flow_sigmas(10, 7.0)
    assert torch.allclose(unshifted, torch.linspace(1, 0, 11))
    assert (shifted[1:-1] > unshifted[1:-1]).all()


def test_denoise_starts_at_first_sigma_below_strength():
    full = flow_sigmas(50, 7.0)
    for denoise in (0.9, 0.5, 0.2):
        k = denoise_start_index(full, denoise)
        assert full[k] <= denoise < full[k - 1]
        part = flow_sigmas(50, 7.0, denoise=denoise)
        assert torch.equal(part, full[k:])
    assert denoise_start_index(full, 1.0) == 0
    # a tiny strength still runs one step
    assert len(flow_sigmas(5, 7.0, denoise=1e-4)) == 2
    with pytest.raises(ValueError, match="denoise=0"):
        flow_sigmas(5, 7.0, denoise=0.0)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.tensor([1.0]), "at least 2"),
        (torch.tensor([[1.0, 0.0]]), "1-D"),
        (torch.tensor([0.5, 0.8, 0.0]), "must not increase"),
        (torch.tensor([14.6, 1.0, 0.0]), r"\[0, 1\]"),
    ],
)
def test_check_sigmas_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        check_sigmas(bad)


def test_check_sigmas_accepts_native_style_tensor():
    native = torch.tensor([1.0, 0.75, 0.5, 0.0], dtype=torch.float64)
    out = check_sigmas(native)
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 0.75, 0.5, 0.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(width=1280, height=720, frames=30), "frames=30 is not 4k+1; nearest valid: 29 or 33"),
        (dict(width=1280, height=720, frames=0), "frames=0 is not 4k+1; nearest valid: 1"),
        (dict(width=1000, height=720, frames=129), "width=1000 is not a positive multiple of 16; nearest valid: 992 or 1008"),
        (dict(width=1280, height=721, frames=129), "height=721 is not a positive multiple of 16; nearest valid: 720 or 736"),
        (dict(width=8, height=720, frames=129), "width=8 is not a positive multiple of 16; nearest valid: 16"),
    ],
)
def test_size_validation_messages(kwargs, message):
    with pytest.raises(ValueError) as err:
        check_video_size(**kwargs)
    assert str(err.value) == message


def test_latent_shape():
    assert latent_shape(1, 1280, 720, 129) == (1, 16, 33, 90, 160)
    assert latent_shape(2, 64, 32, 1) == (2, 16, 1, 4, 8)
    with pytest.raises(ValueError, match="frames=2"):
        latent_shape(1, 64, 64, 2)


@pytest.mark.parametrize("size", [(848, 480, 61), (1280, 720, 129), (16, 16, 1)])
def test_video_size_inverts_latent_shape(size):
    from hunyuan.sampling import latent_shape, video_size

    width, height, frames = size
    assert video_size(latent_shape(2, width, height, frames)) == {"width": width, "height": height, "frames": frames}

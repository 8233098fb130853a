"""How a first frame enters sampling (hunyuan/sampling/image.py): start state, model input, result.

The references disagree in places (REFERENCE.md); these tests pin what the pack does and why.
"""

from __future__ import annotations

import pytest
import torch

from hunyuan.sampling.image import FirstFrame, resolve
from hunyuan.sampling.pipeline import MODEL_LATENT_SCALE as SCALE
from tests.checks import rel_err


def first_frame(mode="token_replace", stability=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return FirstFrame(torch.randn(1, 16, 1, 3, 4, generator=g), torch.rand(1, 16, 1, 3, 4, generator=g) + 0.1,
                      mode, stability)


def test_token_replace_start_has_the_image_in_frame_0_and_noise_after():
    first = first_frame()
    image = resolve("none", first, scale=SCALE, seed=1, latent_hw=(3, 4))
    noise = torch.randn(1, 16, 3, 3, 4)
    x = image.start(noise)
    assert torch.equal(x[:, :, :1], first.mean * SCALE)
    assert torch.equal(x[:, :, 1:], noise[:, :, 1:])  # Tencent's default: plain noise (no --i2v-stability)


def test_stability_starts_from_0999_noise_plus_0001_image():
    """diffusers always does this; Tencent only with --i2v-stability; ComfyUI never."""
    first = first_frame(stability=True)
    image = resolve("concat_mask", first, scale=SCALE, seed=1, latent_hw=(3, 4))
    noise = torch.randn(1, 16, 3, 3, 4)
    t = torch.tensor(0.999)
    assert torch.equal(image.start(noise), noise * t + first.mean * SCALE * (1 - t))


def test_token_replace_model_input_and_frozen_frame_0():
    first = first_frame()
    image = resolve("none", first, scale=SCALE, seed=1, latent_hw=(3, 4))
    seen = {}

    def model(x, t, *args, token_replace=False, **kwargs):
        seen.update(x=x.clone(), token_replace=token_replace)
        return torch.ones_like(x)

    x = torch.randn(2, 16, 3, 3, 4)
    v = image.wrap(model)(x, torch.tensor([500.0]))
    assert seen["token_replace"] is True
    assert torch.equal(seen["x"][:, :, :1], (first.mean * SCALE).expand(2, -1, -1, -1, -1))
    assert torch.equal(seen["x"][:, :, 1:], x[:, :, 1:])
    assert torch.equal(v[:, :, :1], torch.zeros_like(v[:, :, :1])) and torch.equal(v[:, :, 1:], torch.ones_like(v[:, :, 1:]))
    out = image.finish(torch.randn(2, 16, 3, 3, 4))
    assert torch.equal(out[:, :, :1], first.mean.expand(2, -1, -1, -1, -1))  # the raw latent, not raw*s/s


@pytest.mark.parametrize("how,channels", [("concat_mask", 33), ("concat", 32)])
def test_concat_model_input(how, channels):
    image = resolve(how, first_frame(), scale=SCALE, seed=1, latent_hw=(3, 4))
    seen = {}

    def model(x, *args, **kwargs):
        assert "token_replace" not in kwargs
        seen["x"] = x
        return x[:, :16]

    x = torch.randn(1, 16, 3, 3, 4)
    image.wrap(model)(x)
    got = seen["x"]
    assert got.shape[1] == channels and torch.equal(got[:, :16], x)
    assert torch.equal(got[:, 16:32, :1], image.latent) and not got[:, 16:32, 1:].any()
    if how == "concat_mask":
        assert got[:, 32, 0].eq(1).all() and not got[:, 32, 1:].any()
    finished = image.finish(torch.randn(1, 16, 3, 3, 4))
    assert finished.shape[2] == (2 if how == "concat_mask" else 3)  # Tencent/diffusers drop v1's frame 0


def test_skyreels_takes_a_posterior_sample_the_others_the_mean():
    """SkyReels' code and diffusers sample the VAE posterior (ComfyUI takes the mode)."""
    first = first_frame()
    sky = resolve("concat", first, scale=SCALE, seed=3, latent_hw=(3, 4))
    draw = torch.randn(first.mean.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sky.raw, first.mean + first.std * draw)
    assert rel(sky.raw, first.mean) > 0.05
    assert torch.equal(resolve("concat_mask", first, scale=SCALE, seed=3, latent_hw=(3, 4)).raw, first.mean)


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_t2v_mode_ignores_the_image_on_a_16_channel_dit():
    assert resolve("none", first_frame("t2v"), scale=SCALE, seed=0, latent_hw=(3, 4)) is None
    assert resolve("none", None, scale=SCALE, seed=0, latent_hw=(3, 4)) is None


@pytest.mark.parametrize("how", ["concat_mask", "concat"])
def test_i2v_dit_without_an_image_is_named(how):
    with pytest.raises(ValueError, match="image: this DiT is an image-to-video model"):
        resolve(how, None, scale=SCALE, seed=0, latent_hw=(3, 4))


def test_image_of_another_size_is_named():
    with pytest.raises(ValueError, match="image was encoded at 32x24 but the sampler makes 64x48"):
        resolve("none", first_frame(), scale=SCALE, seed=0, latent_hw=(6, 8))


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="mode='v1' is unknown"):
        FirstFrame(torch.zeros(1), torch.zeros(1), "v1")


@pytest.mark.parametrize("extra", ["batched_cfg", "teacache", "first_block"])
@torch.no_grad()
def test_token_replace_runs_with_batched_cfg_and_step_caches(extra):
    """The first frame's own modulation passes through batched CFG and the step caches' probes."""
    from hunyuan.conditioning import RefinedConditioning
    from hunyuan.dit.step_cache import StepCacheRun, StepCacheSettings
    from hunyuan.sampling import flow_sigmas, seeded_noise
    from hunyuan.sampling.pipeline import sample_video
    from tests.unit.test_sampling_pipeline import _dit, _refine, _text

    model, sigmas = _dit(), flow_sigmas(4, 7.0)
    cond = RefinedConditioning(_refine(model, _text(1), sigmas), _refine(model, _text(2), sigmas))
    first = first_frame()
    image = resolve("none", FirstFrame(first.mean[..., :2, :2], first.std[..., :2, :2]), scale=SCALE, seed=0,
                    latent_hw=(2, 2))
    cache = None if extra == "batched_cfg" else StepCacheRun(StepCacheSettings(extra, 0.05))
    out = sample_video(model, cond, sigmas, seeded_noise(3, (1, 16, 3, 2, 2)), cfg=2.0, image=image,
                       batched_cfg=extra == "batched_cfg", step_cache=cache)
    assert torch.equal(out[:, :, :1], first.mean[..., :2, :2]) and out[:, :, 1:].abs().max() > 0
    if cache is None:  # batched CFG is the same maths as two passes
        plain = sample_video(model, cond, sigmas, seeded_noise(3, (1, 16, 3, 2, 2)), cfg=2.0, image=image)
        assert rel_err(out, plain) <= 1e-5

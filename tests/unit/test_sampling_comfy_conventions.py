"""Our sampler follows ComfyUI's conventions: seeded noise, HunyuanVideo latent scaling, and a
SIGMAS tensor that native nodes accept. ComfyUI's own code is the oracle here."""

import comfy.cli_args
import pytest
import torch

comfy.cli_args.args.cpu = True  # before comfy.model_management is imported (no GPU here)

import comfy.latent_formats  # noqa: E402
import comfy.sample  # noqa: E402

from hunyuan.sampling import flow_sigmas, latent_shape, seeded_noise  # noqa: E402
from hunyuan.sampling.pipeline import MODEL_LATENT_SCALE  # noqa: E402


@pytest.mark.parametrize("seed", [0, 42, 2**32 + 5, 0xFFFFFFFFFFFFFFFF])
def test_seeded_noise_equals_comfy_prepare_noise(seed):
    shape = latent_shape(1, 64, 48, 9)
    empty = torch.zeros(shape)  # what EmptyHunyuanLatentVideo gives the native samplers
    assert torch.equal(seeded_noise(seed, shape), comfy.sample.prepare_noise(empty, seed))


def test_seeded_noise_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    seeded_noise(5, (2, 3))
    assert torch.equal(torch.rand(3), expected)


def test_latent_scale_matches_comfy_latent_format():
    fmt = comfy.latent_formats.HunyuanVideo()
    raw = torch.randn(1, 16, 2, 3, 4)
    assert fmt.scale_factor == MODEL_LATENT_SCALE and fmt.latent_channels == 16
    torch.testing.assert_close(fmt.process_in(raw), raw * MODEL_LATENT_SCALE)
    torch.testing.assert_close(fmt.process_out(raw * MODEL_LATENT_SCALE), raw)


def test_sigmas_work_with_native_sigma_nodes():
    from comfy_extras.nodes_custom_sampler import FlipSigmas, SplitSigmas

    sigmas = flow_sigmas(6)
    high, low = SplitSigmas.execute(sigmas, 2).result
    assert torch.equal(torch.cat([high[:-1], low]), sigmas)
    assert torch.equal(FlipSigmas.execute(sigmas).result[0][-1], torch.tensor(1.0))

"""sample_video: the DiT with precomputed refined text inside the loop, scaling, v2v, CFG, checks."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from hunyuan.conditioning import RefinedConditioning, RefinedText, TextEmbeds
from hunyuan.dit import TINY, HunyuanVideoDiT, precompute_refined_text
from hunyuan.sampling import flow_sigmas, seeded_noise
from hunyuan.sampling.pipeline import MODEL_LATENT_SCALE, sample_video
from tests.checks import rel_err

SHAPE = (1, 16, 2, 4, 4)


def _dit():
    torch.manual_seed(0)
    model = HunyuanVideoDiT(TINY).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    return model


def _text(seed):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(1, 6, TINY.text_states_dim, generator=g)
    mask = torch.tensor([[True, True, True, True, False, False]])
    return TextEmbeds(states, mask, torch.randn(1, TINY.text_states_dim_2, generator=g))


def _refine(model, text, sigmas):
    return precompute_refined_text(model.txt_in, text, sigmas, device="cpu", dtype=torch.float32)


@torch.no_grad()
def test_euler_with_refined_text_matches_diffusers_scheduler_loop():
    """Our loop with per-step precomputed tokens vs diffusers' scheduler driving the DiT with raw
    text (the refiner inside the forward), true CFG and embedded guidance on."""
    model, steps, cfg, guidance = _dit(), 4, 3.0, 6.0
    pos, neg = _text(1), _text(2)
    sigmas = flow_sigmas(steps, 7.0)
    cond = RefinedConditioning(_refine(model, pos, sigmas), _refine(model, neg, sigmas))
    noise = seeded_noise(7, SHAPE)
    ours = sample_video(model, cond, sigmas, noise, cfg=cfg, embedded_guidance=guidance)

    sched = FlowMatchEulerDiscreteScheduler(shift=7.0)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    x, g = noise.clone(), torch.tensor([guidance])
    for t in sched.timesteps:
        tt = t.expand(1)
        v_pos = model(x, tt, pos.mask, pos.pooled, g, text_states=pos.states)
        v_neg = model(x, tt, neg.mask, neg.pooled, g, text_states=neg.states)
        x = sched.step(v_neg + cfg * (v_pos - v_neg), t, x, return_dict=False)[0]
    ref = x / MODEL_LATENT_SCALE
    # fp32; the refiner output is bit-identical, the residual is summation order in attention
    assert rel_err(ours, ref) <= 1e-5


class Recorder(torch.nn.Module):
    """A DiT stand-in returning a constant velocity and recording its calls."""

    def __init__(self, velocity=0.0):
        super().__init__()
        self.velocity, self.calls = velocity, []

    def forward(self, x, timestep, mask, pooled, guidance, *, refined_text=None):
        self.calls.append((float(timestep[0]), refined_text.clone(), None if guidance is None else float(guidance[0])))
        return torch.full_like(x, self.velocity)


def _fake_text(sigmas, value=0.0, batch=1):
    steps = len(sigmas) - 1
    tokens = torch.arange(steps, dtype=torch.float32).view(steps, 1, 1, 1).expand(steps, batch, 3, 8) + value
    return RefinedText(sigmas, tokens.clone(), torch.ones(batch, 3, dtype=torch.bool), torch.zeros(batch, 4))


def test_latent_scaling_and_noise_for_text_to_video():
    sigmas = flow_sigmas(3)
    noise = seeded_noise(0, SHAPE)
    out = sample_video(Recorder(0.0), RefinedConditioning(_fake_text(sigmas)), sigmas, noise)
    torch.testing.assert_close(out, noise / MODEL_LATENT_SCALE)  # zero velocity: noise in model space


def test_video_to_video_starts_at_denoise_and_uses_matching_tokens():
    sigmas = flow_sigmas(10, 7.0)
    latent, noise = torch.full(SHAPE, 2.0), seeded_noise(1, SHAPE)
    model = Recorder(0.0)
    out = sample_video(model, RefinedConditioning(_fake_text(sigmas)), sigmas, noise, latent=latent, denoise=0.5)
    k = int((sigmas[:-1] <= 0.5).nonzero()[0])
    s = float(sigmas[k])
    assert [c[0] for c in model.calls] == pytest.approx((sigmas[k:-1] * 1000).tolist())
    assert [float(c[1].flatten()[0]) for c in model.calls] == list(range(k, 10))  # token step k, k+1, ...
    expected = ((1 - s) * latent * MODEL_LATENT_SCALE + s * noise) / MODEL_LATENT_SCALE
    torch.testing.assert_close(out, expected)


def test_cfg_one_ignores_negative_and_guidance_is_passed_raw():
    sigmas = flow_sigmas(2)
    model = Recorder(1.0)
    cond = RefinedConditioning(_fake_text(sigmas), _fake_text(sigmas, 100.0))
    sample_video(model, cond, sigmas, seeded_noise(0, SHAPE), cfg=1.0, embedded_guidance=6.0)
    assert len(model.calls) == 2 and all(c[2] == 6.0 for c in model.calls)
    model.calls.clear()
    sample_video(model, cond, sigmas, seeded_noise(0, SHAPE), cfg=4.0, embedded_guidance=None)
    assert len(model.calls) == 4 and float(model.calls[1][1].flatten()[0]) == 100.0 and model.calls[0][2] is None


def test_schedule_mismatch_is_a_clear_error():
    model = Recorder()
    cond = RefinedConditioning(_fake_text(flow_sigmas(4)))
    with pytest.raises(ValueError, match=r"refined for 4 steps .* sampler got 6 steps"):
        sample_video(model, cond, flow_sigmas(6), seeded_noise(0, SHAPE))
    with pytest.raises(ValueError, match=r"refined for 4 steps"):
        sample_video(model, cond, flow_sigmas(4, shift=3.0), seeded_noise(0, SHAPE))


def test_partial_schedule_without_latent_is_refused():
    sigmas = flow_sigmas(6)[2:]
    with pytest.raises(ValueError, match="no input latent"):
        sample_video(Recorder(), RefinedConditioning(_fake_text(sigmas)), sigmas, seeded_noise(0, SHAPE))


def test_batch_expands_single_prompt():
    sigmas = flow_sigmas(2)
    out = sample_video(Recorder(0.5), RefinedConditioning(_fake_text(sigmas)), sigmas, seeded_noise(0, (2, 16, 1, 2, 2)))
    assert out.shape == (2, 16, 1, 2, 2)


@torch.no_grad()
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_batched_cfg_equals_two_forwards(solver):
    """Both passes in one forward (prompts of different lengths padded and masked) give the
    two-forward result: fp32, bound 1e-6 (summation order in attention over the padded keys)."""
    model, steps = _dit(), 3
    g = torch.Generator().manual_seed(4)
    long_text = TextEmbeds(torch.randn(1, 9, TINY.text_states_dim, generator=g), torch.ones(1, 9, dtype=torch.bool),
                           torch.randn(1, TINY.text_states_dim_2, generator=g))
    sigmas = flow_sigmas(steps, 7.0)
    cond = RefinedConditioning(_refine(model, _text(1), sigmas), _refine(model, long_text, sigmas))
    assert cond.positive.tokens.shape[2] != cond.negative.tokens.shape[2]
    noise = seeded_noise(3, (2, *SHAPE[1:]))  # a batch of two videos, one prompt
    two = sample_video(model, cond, sigmas, noise, cfg=4.0, solver=solver)
    one = sample_video(model, cond, sigmas, noise, cfg=4.0, solver=solver, batched_cfg=True)
    assert rel_err(one, two) <= 1e-6
    assert not torch.equal(one, sample_video(model, cond, sigmas, noise, cfg=1.0))  # CFG did something


def test_batched_cfg_doubles_the_planned_activations():
    from hunyuan.memory import estimate_sampling_memory

    kw = {"width": 848, "height": 480, "frames": 61, "cfg": True}
    two, one = estimate_sampling_memory(**kw), estimate_sampling_memory(**kw, batched_cfg=True)
    video = estimate_sampling_memory(**{**kw, "cfg": False}, batched_cfg=True)
    assert one.weights_bytes == two.weights_bytes and one.text_bytes == two.text_bytes
    assert one.activation_bytes > 1.9 * two.activation_bytes
    assert video.activation_bytes == estimate_sampling_memory(**{**kw, "cfg": False}).activation_bytes

"""Sampling a video latent with the DiT: the glue between the loop and the model.

Latent spaces: ``LATENT`` (what ComfyUI nodes pass around) is the *raw* VAE latent. The DiT
works on ``raw * MODEL_LATENT_SCALE`` (the VAE's scaling factor), and the noise is drawn in
that model space; the result is divided back before it leaves. This matches ComfyUI's
``latent_formats.HunyuanVideo`` (process_in / process_out) and diffusers' pipeline (which
divides by ``vae.config.scaling_factor`` before decoding).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..conditioning import RefinedConditioning, RefinedText
from ..dit.step_cache import StepCacheRun, StepCacheState
from ..vae.config import SCALING_FACTOR
from .image import ImageInput
from .loop import StepCallback, guided_velocity, noise_latent, sample_flow
from .schedule import NUM_TRAIN_TIMESTEPS, check_sigmas, denoise_start_index
from .solvers import VelocityFn

MODEL_LATENT_SCALE = SCALING_FACTOR  # the VAE's latent scale: the DiT works on raw * this
SCHEDULE_TOLERANCE = 1e-5


def check_schedule_match(text: RefinedText, sigmas: torch.Tensor, which: str = "positive") -> None:
    """The refined tokens were computed for one schedule; sampling must use the same one."""
    own = text.sigmas.detach().to("cpu", torch.float32)
    if own.shape != sigmas.shape or not torch.allclose(own, sigmas, atol=SCHEDULE_TOLERANCE, rtol=0):
        raise ValueError(
            f"the {which} conditioning was refined for {len(own) - 1} steps (sigmas {_brief(own)}) but the "
            f"sampler got {len(sigmas) - 1} steps (sigmas {_brief(sigmas)}); connect the same SIGMAS "
            "to the token refiner and the sampler"
        )
    if text.tokens.shape[0] != len(sigmas) - 1:
        raise ValueError(f"the {which} conditioning has tokens for {text.tokens.shape[0]} steps, expected {len(sigmas) - 1}")


def _brief(sigmas: torch.Tensor) -> str:
    values = [f"{v:.4f}" for v in sigmas.tolist()]
    return "[" + ", ".join(values if len(values) <= 6 else values[:3] + ["..."] + values[-2:]) + "]"


def text_velocity(
    model: Callable[..., torch.Tensor],
    text: RefinedText,
    sigmas: torch.Tensor,
    *,
    offset: int,
    guidance: float | None,
    device: torch.device | str = "cpu",
    cache: StepCacheState | None = None,
) -> VelocityFn:
    """velocity(x, i): the DiT at ``sigmas[i]`` with the refined tokens of schedule step offset+i.

    x: [B,16,T,H,W] float32 model space -> [B,16,T,H,W] float32 velocity.
    The steps' tokens, mask and pooled vector go to ``device`` once here, not once per step (the
    memory planner already counts every step's tokens as resident). ``cache``: this pass's step
    cache state, told the step before each call.
    """
    total = len(sigmas) - 1
    all_tokens = text.tokens[offset:].to(device)
    text_mask, text_pooled = text.mask.to(device), text.pooled.to(device)

    def velocity(x: torch.Tensor, i: int) -> torch.Tensor:
        batch = x.shape[0]
        tokens, mask, pooled = all_tokens[i], text_mask, text_pooled
        if tokens.shape[0] != batch:
            if tokens.shape[0] != 1:
                raise ValueError(f"conditioning batch {tokens.shape[0]} does not match latent batch {batch}")
            tokens, mask, pooled = (t.expand(batch, *t.shape[1:]) for t in (tokens, mask, pooled))
        timestep = (sigmas[i] * NUM_TRAIN_TIMESTEPS).to(x.device).expand(batch)
        g = None if guidance is None else torch.full((batch,), float(guidance), device=x.device)
        if cache is None:
            return model(x, timestep, mask, pooled, g, refined_text=tokens).to(torch.float32)
        cache.begin(i, total)
        return cache.model_call(
            x, lambda: model(x, timestep, mask, pooled, g, refined_text=tokens, step_cache=cache).to(torch.float32)
        )

    return velocity


def batched_guided_velocity(
    model: Callable[..., torch.Tensor],
    positive: RefinedText,
    negative: RefinedText,
    sigmas: torch.Tensor,
    cfg: float,
    *,
    offset: int,
    guidance: float | None,
    device: torch.device | str = "cpu",
) -> VelocityFn:
    """True CFG with both passes in one forward: ``v_u + cfg * (v_c - v_u)``.

    The two prompts' refined tokens are padded to one length (the padding masked out, so it
    takes no part in attention) and stacked along the batch: [cond; uncond]. The same maths as
    :func:`guided_velocity` over two :func:`text_velocity` calls, with twice the activations.
    """
    length = max(positive.tokens.shape[2], negative.tokens.shape[2])

    def padded(text: RefinedText) -> tuple[torch.Tensor, torch.Tensor]:
        extra = length - text.tokens.shape[2]
        tokens = torch.nn.functional.pad(text.tokens[offset:], (0, 0, 0, extra)).to(device)
        return tokens, torch.nn.functional.pad(text.mask, (0, extra), value=False).to(device)

    (pos_tokens, pos_mask), (neg_tokens, neg_mask) = padded(positive), padded(negative)
    pos_pooled, neg_pooled = positive.pooled.to(device), negative.pooled.to(device)

    def both(batch: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape[0] not in (1, batch) or b.shape[0] not in (1, batch):
            raise ValueError(f"conditioning batch {a.shape[0]}/{b.shape[0]} does not match latent batch {batch}")
        return torch.cat([a.expand(batch, *a.shape[1:]), b.expand(batch, *b.shape[1:])])

    def velocity(x: torch.Tensor, i: int) -> torch.Tensor:
        batch = x.shape[0]
        tokens = both(batch, pos_tokens[i], neg_tokens[i])
        mask, pooled = both(batch, pos_mask, neg_mask), both(batch, pos_pooled, neg_pooled)
        timestep = (sigmas[i] * NUM_TRAIN_TIMESTEPS).to(x.device).expand(2 * batch)
        g = None if guidance is None else torch.full((2 * batch,), float(guidance), device=x.device)
        out = model(torch.cat([x, x]), timestep, mask, pooled, g, refined_text=tokens).to(torch.float32)
        v_cond, v_uncond = out[:batch], out[batch:]
        return v_uncond + cfg * (v_cond - v_uncond)

    return velocity


def _run_velocity(model, positive: RefinedText, negative: RefinedText | None, run: torch.Tensor, cfg: float, *,
                  offset: int, guidance: float | None, device, step_cache: StepCacheRun | None,
                  batched_cfg: bool) -> VelocityFn:
    """The guided velocity of a run: one forward per pass, or both in one (batched CFG)."""
    if negative is not None and batched_cfg and step_cache is None:
        return batched_guided_velocity(model, positive, negative, run, cfg, offset=offset, guidance=guidance,
                                       device=device)

    def one_pass(text: RefinedText, which: str) -> VelocityFn:
        cache = step_cache.state(which) if step_cache is not None else None
        return text_velocity(model, text, run, offset=offset, guidance=guidance, device=device, cache=cache)

    cond = one_pass(positive, "cond")
    return guided_velocity(cond, one_pass(negative, "uncond") if negative is not None else None, cfg)


def sample_video(
    model: Callable[..., torch.Tensor],
    conditioning: RefinedConditioning,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    *,
    latent: torch.Tensor | None = None,
    denoise: float = 1.0,
    cfg: float = 1.0,
    embedded_guidance: float | None = 6.0,
    solver: str = "euler",
    device: torch.device | str = "cpu",
    callback: StepCallback | None = None,
    step_cache: StepCacheRun | None = None,
    batched_cfg: bool = False,
    image: ImageInput | None = None,
) -> torch.Tensor:
    """Sample a video latent.

    noise:   [B,16,T,H,W] standard normal (drawn in model space), any device
    latent:  [B,16,T,H,W] raw VAE latent to start from (video-to-video), or None
    denoise: the noise level the input latent is brought to; sampling starts at the first step
             whose sigma is <= denoise (1.0 = from pure noise)
    cfg:     true classifier-free guidance with the conditioning's negative (off at 1.0)
    step_cache: a fresh StepCacheRun (one state per pass), or None to compute every step
    batched_cfg: run true CFG's two passes as one forward (not with a step cache, whose passes
             keep separate states)
    image:   image-to-video: a first frame resolved for this DiT (:func:`.image.resolve`); not with
             an input latent
    Returns: [B,16,T,H,W] float32 raw VAE latent on ``device`` (T-1 frames for I2V concat_mask).
    """
    sigmas = check_sigmas(sigmas)
    check_schedule_match(conditioning.positive, sigmas, "positive")
    negative = conditioning.negative if cfg != 1.0 else None
    if negative is not None:
        check_schedule_match(negative, sigmas, "negative")
    start = denoise_start_index(sigmas, denoise)
    run = sigmas[start:].to(device)
    if solver == "heun" and float(run[-1]) != 0.0:
        raise ValueError("solver='heun' needs a schedule that ends at sigma 0 (its corrector has no tokens past the end)")
    noise = noise.to(device=device, dtype=torch.float32)
    if image is not None:
        if latent is not None:
            raise ValueError("latent: image-to-video starts from noise (and the image); disconnect the input latent")
        model = image.wrap(model)
    if latent is None:
        if float(run[0]) < 1.0:
            raise ValueError(
                f"the schedule starts at sigma {float(run[0]):.4f} (< 1, denoise={denoise}) but no input latent "
                "was given: partial denoising needs a latent to start from"
            )
        x = noise if image is None else image.start(noise)
    else:
        if latent.shape != noise.shape:
            raise ValueError(f"latent has shape {tuple(latent.shape)}, expected {tuple(noise.shape)} for this size")
        x = noise_latent(latent.to(device) * MODEL_LATENT_SCALE, noise, float(run[0]))
    velocity = _run_velocity(model, conditioning.positive, negative, run, cfg, offset=start,
                             guidance=embedded_guidance, device=device, step_cache=step_cache, batched_cfg=batched_cfg)
    out = sample_flow(velocity, x, run, solver=solver, callback=callback)
    return out / MODEL_LATENT_SCALE if image is None else image.finish(out)

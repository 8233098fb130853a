"""Sampling stage nodes: the flow-matching schedule, the step cache and the sampler.

All the maths lives in ``hunyuan/sampling`` (schedule, solvers, loop), ``hunyuan/offload``
(block swap) and ``hunyuan/memory`` (planner). Here: sockets, ComfyUI's model management,
progress with previews, and interruption.
"""

from __future__ import annotations

import contextlib
import logging

import comfy.latent_formats
import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from ..hunyuan.conditioning import RefinedConditioning, RefinedText
from ..hunyuan.dit.compile import compiled_blocks, usable
from ..hunyuan.dit.step_cache import DEFAULTS, KINDS, StepCacheRun, StepCacheSettings
from ..hunyuan.memory import estimate_sampling_memory, sampling_sizes
from ..hunyuan.sampling import (
    SOLVERS,
    check_sigmas,
    check_video_size,
    flow_sigmas,
    latent_shape,
    seeded_noise,
    video_size,
)
from ..hunyuan.sampling.pipeline import sample_video
from ..hunyuan.sampling.schedule import SIZE_MULTIPLE
from .blockswap import active_engine, run_sizes, swap_for_run
from .common import size_input
from .dit import COMPILE_KEY
from .i2v import image_input
from .multi import MULTI_KEY, sample_on_workers
from .types import CATEGORY, CheckedNode, Conditioning, DiT, ImageLatent, option, with_option

log = logging.getLogger(__name__)

MAX_FRAMES = 1025
STEP_CACHE_KEY = "hyvid_step_cache"  # a with_option() key


class HunyuanVideoScheduler(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoScheduler",
            display_name="HunyuanVideo Scheduler",
            category=CATEGORY,
            description="Flow-matching sigmas of the reference: linspace(1, 0, steps+1) with the flow shift.",
            inputs=[
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Number of sampling steps (reference: 50)."),
                io.Float.Input("shift", default=7.0, min=0.01, max=100.0, step=0.1,
                               tooltip="Flow shift s: sigma' = s*sigma / (1 + (s-1)*sigma). Higher spends more steps "
                               "at high noise (reference: 7.0; ~5 for small sizes)."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="Start at the first step whose noise level is <= this (video-to-video). "
                               "1.0 = the whole schedule."),
            ],
            outputs=[io.Sigmas.Output(display_name="sigmas",
                                      tooltip="1-D float tensor ending with 0; works with native sigma nodes.")],
        )

    @classmethod
    def execute(cls, steps: int, shift: float, denoise: float) -> io.NodeOutput:
        return io.NodeOutput(flow_sigmas(steps, shift, denoise))


class HunyuanVideoStepCache(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        published = ", ".join(f"{k} {v[0]:g}" + (f" from {v[1]:g}" if v[1] else "") for k, v in DEFAULTS.items())
        return io.Schema(
            node_id="HunyuanVideoStepCache",
            display_name="HunyuanVideo Step Cache",
            category=CATEGORY,
            description="Skips most of the DiT on steps where its output barely changes (TeaCache, First Block "
            "Cache or EasyCache). Put it between the DiT and the sampler.",
            inputs=[
                DiT.Input("dit", tooltip="The DiT (from the loader or Block Swap)."),
                io.Combo.Input("rule", options=list(KINDS), default="teacache",
                               tooltip="teacache: accumulated change of the first block's modulated input. "
                               "first_block: runs block 0 and skips the rest while its residual is unchanged. "
                               "easycache: estimated change of the whole model's output."),
                io.Float.Input("threshold", default=DEFAULTS["teacache"][0], min=0.0, max=5.0, step=0.005,
                               tooltip=f"Higher skips more steps (0 = never skip). Published: {published}."),
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps before which every step is computed (EasyCache's "
                               "published warm-up is 0.1). The first and last steps are always computed."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps from which every step is computed again."),
            ],
            outputs=[DiT.Output(display_name="dit", tooltip="A clone of the DiT carrying the cache settings.")],
        )

    @classmethod
    def execute(cls, dit, rule, threshold, start, end) -> io.NodeOutput:
        settings = StepCacheSettings(rule, threshold, start, end)
        return io.NodeOutput(with_option(dit, STEP_CACHE_KEY, settings))


def step_cache_run(dit) -> StepCacheRun | None:
    """Fresh per-run cache states for a DiT that carries step-cache settings."""
    settings = option(dit, STEP_CACHE_KEY)
    return StepCacheRun(settings) if settings is not None else None


def _check_conditioning(conditioning) -> RefinedConditioning:
    if not isinstance(conditioning, RefinedConditioning) or not isinstance(conditioning.positive, RefinedText):
        raise ValueError(
            f"conditioning is a {type(conditioning).__name__}, expected the output of HunyuanVideo Token Refiner"
        )
    return conditioning


def _start_latent(latent: dict | None, shape: tuple[int, ...], width: int, height: int, frames: int):
    """The input latent for video-to-video, checked against the requested size (raw VAE space)."""
    if latent is None:
        return None
    samples = latent["samples"]
    if samples.ndim == 4:  # a single image latent [B, 16, H, W]
        samples = samples.unsqueeze(2)
    if tuple(samples.shape[1:]) != tuple(shape[1:]):
        size = video_size(samples.shape)
        raise ValueError(
            f"latent has shape {tuple(samples.shape)} ({samples.shape[1]} channels, {size['frames']} frames, "
            f"{size['width']}x{size['height']}) but "
            f"width={width}, height={height}, frames={frames} need {tuple(shape[1:])}; set them to the latent's size"
        )
    return samples.to(torch.float32)


def _activation_estimate(model, sizes: dict) -> int:
    """Working memory (not weights) the sampler needs on the device, from the planner."""
    est = estimate_sampling_memory(model.config, **run_sizes(model, sizes))
    return est.activation_bytes + est.state_bytes + est.text_bytes


def _progress(total: int, device, cache: StepCacheRun | None = None, node_id: str | None = None):
    """Step callback: progress bar with a latent preview, the step cache's computed/skipped
    counts as the node's progress text (ComfyUI's own way to show text on a running node), then
    the interrupt check."""
    pbar = comfy.utils.ProgressBar(total)
    previewer = latent_preview.get_previewer(device, comfy.latent_formats.HunyuanVideo())

    def callback(info) -> None:
        preview = previewer.decode_latent_to_preview_image("JPEG", info.denoised) if previewer else None
        pbar.update_absolute(info.index + 1, info.total, preview)
        if cache is not None and node_id is not None:
            from server import PromptServer  # ComfyUI's server module: imported only inside a running server

            PromptServer.instance.send_progress_text(cache.summary(), node_id)
        mm.throw_exception_if_processing_interrupted()

    return callback


def _compiled(patcher):
    """Compiled block forwards for this run when the DiT carries Compile settings."""
    settings = option(patcher, COMPILE_KEY)
    if settings is None or not usable(settings, patcher.load_device):
        return contextlib.nullcontext()
    log.info("HunyuanVideo: compiled DiT blocks (%s); the first run at a new size compiles", settings)
    return compiled_blocks(patcher.model, settings)


class HunyuanVideoSampler(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoSampler",
            display_name="HunyuanVideo Sampler",
            category=CATEGORY,
            description="Samples a video latent with the DiT (flow matching, embedded guidance, optional true CFG). "
            "Output is a raw VAE latent, decodable by our VAE Decode or native nodes.",
            inputs=[
                DiT.Input("dit", tooltip="The DiT (from the loader, or from Block Swap)."),
                Conditioning.Input("conditioning", tooltip="Refined text from HunyuanVideo Token Refiner; its "
                                   "negative prompt, if any, is used for true CFG."),
                io.Sigmas.Input("sigmas", tooltip="The schedule; must be the one the token refiner used."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed; the same seed gives the same noise as native ComfyUI samplers."),
                size_input("width", 848, f"Video width in pixels, a multiple of {SIZE_MULTIPLE}."),
                size_input("height", 480, f"Video height in pixels, a multiple of {SIZE_MULTIPLE}."),
                io.Int.Input("frames", default=61, min=1, max=MAX_FRAMES, step=4,
                             tooltip="Number of frames, 4k+1 (e.g. 61, 129)."),
                io.Float.Input("embedded_guidance", default=6.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Guidance strength fed to the distilled model (reference: 6.0)."),
                io.Float.Input("cfg", default=1.0, min=1.0, max=30.0, step=0.1,
                               tooltip="True classifier-free guidance with the negative prompt: 1.0 = off (one "
                               "DiT pass per step); >1 doubles the cost."),
                io.Combo.Input("solver", options=list(SOLVERS), default="euler",
                               tooltip="euler: the reference. dpmpp_2m: 2nd order at the same cost. heun: 2nd "
                               "order, two DiT passes per step."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Optional video latent to start from (video-to-video), raw VAE space."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="With a latent: the noise level it is brought to; sampling starts at the first "
                               "step whose sigma is <= this. Ignored (must be 1) without a latent."),
                io.Boolean.Input("batch_cfg", default=False, optional=True,
                                 tooltip="With true CFG: run the prompt and the negative prompt as one forward of "
                                 "twice the batch (same result; faster on a GPU at small sizes, but twice the "
                                 "activation memory, which the block-swap planner counts). Not with a Step Cache."),
                ImageLatent.Input("image_latent", optional=True, tooltip="Image-to-video: the start image from "
                                  "HunyuanVideo I2V Encode (needed by I2V DiTs); not with an input latent."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="{'samples': [B,16,T,H/8,W/8]} raw VAE latent.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, dit, conditioning, sigmas, seed, width, height, frames, embedded_guidance, cfg, solver,
                latent=None, denoise=1.0, batch_cfg=False, image_latent=None) -> io.NodeOutput:
        check_video_size(width, height, frames)
        conditioning = _check_conditioning(conditioning)
        sigmas = check_sigmas(sigmas)
        batch = latent["samples"].shape[0] if latent is not None else conditioning.positive.tokens.shape[1]
        shape = latent_shape(batch, width, height, frames)
        start = _start_latent(latent, shape, width, height, frames)
        image = image_input(dit, image_latent, seed, shape)
        if start is None and denoise < 1.0:
            raise ValueError(f"denoise={denoise} needs an input latent (video-to-video); connect one or set 1.0")
        text_tokens, use_cfg = conditioning.positive.tokens.shape[2], cfg != 1.0 and conditioning.negative is not None
        cache = step_cache_run(dit)
        if batch_cfg and use_cfg and cache is not None:
            log.info("batch_cfg is off for this run: a Step Cache keeps separate states for the two passes")
        batched = bool(batch_cfg and use_cfg and cache is None)
        noise = seeded_noise(seed, shape)
        if option(dit, MULTI_KEY) is not None:
            out = sample_on_workers(dit, conditioning, sigmas, noise, latent=start, denoise=denoise, cfg=cfg,
                                    embedded_guidance=embedded_guidance, solver=solver, step_cache=cache, image=image)
            return io.NodeOutput({"samples": out.to(mm.intermediate_device())})
        sizes = sampling_sizes(shape, text_tokens=text_tokens, steps=len(sigmas) - 1, cfg=use_cfg,
                               batched_cfg=batched)
        patcher = swap_for_run(dit, sizes)
        memory = _activation_estimate(patcher.model, sizes)
        # no force_full_load: the DiT is built from comfy.ops, so when it does not fit ComfyUI may load
        # it partly and cast the rest on use (patches applied on the fly); Block Swap loads as it places
        mm.load_models_gpu([patcher], memory_required=memory)
        device = patcher.load_device
        engine = active_engine(patcher)
        guard = engine.running(mm.throw_exception_if_processing_interrupted) if engine else contextlib.nullcontext()
        with torch.inference_mode(), guard, _compiled(patcher):
            out = sample_video(
                patcher.model, conditioning, sigmas, noise, latent=start, denoise=denoise, cfg=cfg,
                embedded_guidance=embedded_guidance, solver=solver, device=device,
                callback=_progress(len(sigmas) - 1, device, cache, cls.hidden.unique_id), step_cache=cache,
                batched_cfg=batched, image=image,
            )
        if cache is not None:
            log.info("HunyuanVideo step cache %s", cache.summary())
        return io.NodeOutput({"samples": out.to(mm.intermediate_device())})


NODES = [HunyuanVideoScheduler, HunyuanVideoStepCache, HunyuanVideoSampler]

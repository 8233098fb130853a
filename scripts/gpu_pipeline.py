"""The GPU check's whole-pipeline stage: the tiny model files through the real loaders, every
component kept on the CPU and moved to the device only for its own call (as ComfyUI's model
management does), the DiT with block swap; the device's video against the all-CPU video.

This is the path where users of other packs hit a device mismatch (one encoder left on the CPU
while the rest ran on the GPU): every call here gets its inputs from the previous component's
output device, and each component must come back to the CPU whole.
"""

from __future__ import annotations

import torch

from hunyuan import text
from hunyuan.conditioning import RefinedConditioning
from hunyuan.dit import precompute_refined_text
from hunyuan.dit.checkpoint import load_dit
from hunyuan.dit.tiny import TINY_DIT_FILE
from hunyuan.offload import BlockSwapEngine, SwapSettings
from hunyuan.sampling import flow_sigmas, latent_shape, seeded_noise
from hunyuan.sampling.pipeline import sample_video
from hunyuan.text.tiny import CLIP_DIR, CLIP_FILE, LLAMA_DIR, LLAMA_FILE
from hunyuan.vae import load_vae
from hunyuan.vae.tiled import decode
from hunyuan.vae.tiling import TileSpec
from hunyuan.vae.tiny import TINY_NAME
from scripts.gpu_common import Ctx, expect, finite, rel_err, within

PIPELINE_TOL = 1e-3  # fp32 through 3 Euler steps and a tiled decode; TF32 off on the device
SIZE = {"width": 32, "height": 32, "frames": 5}


def _visit(device: torch.device, model: torch.nn.Module, fn, what: str):
    """Load ``model`` on ``device`` for one call, then offload it; it must come back whole."""
    model.to(device)
    try:
        return fn()
    finally:
        model.to("cpu")
        stray = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type != "cpu"]
        expect(not stray, f"{what}: {len(stray)} tensor(s) stayed on the device after offload, e.g. {stray[:3]}")


def _text(device: torch.device, models) -> object:
    fp32 = text.parse_dtype("fp32")
    llm = text.load_llm(models / "text_encoders" / LLAMA_FILE, fp32)
    clip = text.load_clip(models / "text_encoders" / CLIP_FILE, fp32)
    encoders = text.TextEncoders(llm, text.load_llm_tokenizer(models / "LLM" / LLAMA_DIR), clip,
                                 text.load_clip_tokenizer(models / "clip" / CLIP_DIR))
    options = text.EncodeOptions(template=text.get_template("video"))
    llm.to(device)  # both encoders are visited: the CLIP one must follow the LLM onto the device
    try:
        embeds = _visit(device, clip, lambda: text.encode_prompts(encoders, ["a red fox in the snow"], options, device,
                                                              negative=["blurry"]), "CLIP-L")
    finally:
        llm.to("cpu")
    expect(embeds.positive.states.device.type == device.type, f"text states on {embeds.positive.states.device}")
    return embeds


def run_pipeline(device: torch.device, models) -> tuple[torch.Tensor, torch.Tensor]:
    """(latent, video) of one tiny text-to-video run with every component offloaded."""
    embeds = _text(device, models)
    dit = load_dit(models / "diffusion_models" / TINY_DIT_FILE, device="cpu", dtype=torch.float32)
    refiner = dit.detach_refiner()
    sigmas = flow_sigmas(3)

    def refine():
        return [precompute_refined_text(refiner, e, sigmas, device=device, dtype=torch.float32)
                for e in (embeds.positive, embeds.negative)]

    positive, negative = _visit(device, refiner, refine, "token refiner")
    cond = RefinedConditioning(positive=positive, negative=negative)
    noise = seeded_noise(0, latent_shape(1, **SIZE))
    engine = BlockSwapEngine(dit, SwapSettings(double_blocks=1, single_blocks=1, prefetch=1), device).place()
    try:
        with engine.running():
            latent = sample_video(dit, cond, sigmas, noise, cfg=2.0, device=device)
    finally:
        dit.to("cpu")
    vae = load_vae(models / "vae" / TINY_NAME, device="cpu", dtype=torch.float32)
    spec = TileSpec(tile=0, overlap=0, chunk=1)  # temporal chunks: the carried-tail path
    video = _visit(device, vae, lambda: decode(vae, latent.to(device), spec, out_device="cpu"), "VAE")
    return latent, video


def stage_pipeline(ctx: Ctx) -> dict:
    models = ctx.work / "models"
    latent, video = run_pipeline(ctx.device, models)
    ref_latent, ref_video = run_pipeline(torch.device("cpu"), models)
    finite("pipeline video", video)
    expect(latent.device.type == ctx.device.type, f"latent on {latent.device}, expected {ctx.device}")
    return {"size": SIZE, "steps": 3, "cfg": 2.0, "swap": "1 double + 1 single",
            "latent": within("pipeline latent device vs CPU", rel_err(latent, ref_latent), PIPELINE_TOL),
            "video": within("pipeline video device vs CPU", rel_err(video, ref_video), PIPELINE_TOL)}

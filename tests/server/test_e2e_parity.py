"""End to end through a real ComfyUI: the t2v graph queued over the API equals diffusers'
HunyuanVideoPipeline built from the same tiny weight files, with the same initial noise (ComfyUI's
seed convention) and the same schedule.

The server saves the raw latent (native SaveLatent) and the decoded frames (native SaveImage,
8-bit PNG). Latents are compared in fp32 (relative error <= 1e-4, the issue's bound for a whole
multi-step pipeline); frames can differ by at most one 8-bit level (rounding of equal floats).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPTextModel, LlamaModel

from hunyuan.checkpoint_io import load_state_dict
from hunyuan.dit.config import infer_config
from hunyuan.sampling import latent_shape, seeded_noise
from hunyuan.sampling.pipeline import MODEL_LATENT_SCALE
from hunyuan.text import VIDEO, crop_start, load_clip_tokenizer, load_llm_tokenizer
from hunyuan.text.tiny import CLIP_DIR, LLAMA_DIR, clip_tokenizer_dir, llama_tokenizer_dir
from hunyuan.vae.loader import infer_config as infer_vae_config
from scripts.comfy_server import ROOT
from scripts.smoke_size import shrink
from tests.conftest import COMFYUI_DIR
from tests.peers import diffusers_dit, diffusers_vae

pytestmark = pytest.mark.server

SEED, STEPS = 11, 3


def server_graph() -> dict:
    graph = shrink(json.loads((ROOT / "workflows" / "t2v_basic_api.json").read_text()))
    graph["1"]["inputs"]["dtype"] = "fp32"
    graph["3"]["inputs"]["weight_dtype"] = "fp32"
    graph["3"]["inputs"]["attention"] = "sdpa"
    graph["4"]["inputs"]["steps"] = STEPS
    graph["6"]["inputs"]["seed"] = SEED
    graph["7"]["inputs"]["dtype"] = "fp32"
    graph["8"]["inputs"]["tiling"] = "off"
    del graph["9"], graph["10"]
    graph["20"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "latents/e2e"}}
    graph["21"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "e2e/frame"}}
    return graph


def reference_pipeline(models) -> HunyuanVideoPipeline:
    dit_sd = load_state_dict(models / "diffusion_models" / "hyvid_tiny_dit.safetensors")
    dit = diffusers_dit(infer_config(dit_sd), {k: v.float() for k, v in dit_sd.items()})
    vae_sd = {k: v.float() for k, v in load_state_dict(models / "vae" / "hyvid_tiny_vae.safetensors").items()}
    vae = diffusers_vae(infer_vae_config(vae_sd), vae_sd)
    return HunyuanVideoPipeline(
        text_encoder=LlamaModel.from_pretrained(models / "LLM" / LLAMA_DIR, torch_dtype=torch.float32).eval(),
        tokenizer=load_llm_tokenizer(llama_tokenizer_dir(COMFYUI_DIR)), transformer=dit.eval(), vae=vae.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=CLIPTextModel.from_pretrained(models / "clip" / CLIP_DIR, torch_dtype=torch.float32).eval(),
        tokenizer_2=load_clip_tokenizer(clip_tokenizer_dir(COMFYUI_DIR)),
    )


def test_api_graph_equals_diffusers_pipeline(comfy):
    graph = server_graph()
    entry = comfy.run(graph, timeout=600)
    files = comfy.output_files(entry)
    latent_file = next(f for f in files if f.suffix == ".latent")
    raw = load_file(str(latent_file))["latent_tensor"].float()
    frames = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in sorted(p for p in files if p.suffix == ".png")])

    sampler = graph["6"]["inputs"]
    width, height, n_frames = sampler["width"], sampler["height"], sampler["frames"]
    noise = seeded_noise(SEED, latent_shape(1, width, height, n_frames))
    pipe = reference_pipeline(comfy.base_dir / "models")
    template = {"template": VIDEO.text, "crop_start": crop_start(pipe.tokenizer, VIDEO)}
    prompt = graph["2"]["inputs"]["prompt"]
    with torch.no_grad():
        ref = pipe(prompt=prompt, height=height, width=width, num_frames=n_frames, num_inference_steps=STEPS,
                   guidance_scale=sampler["embedded_guidance"], latents=noise.clone(), prompt_template=template,
                   output_type="latent", return_dict=False)[0]
        video = pipe.vae.decode(ref / pipe.vae.config.scaling_factor).sample

    assert raw.shape == ref.shape == (1, 16, 3, height // 8, width // 8)
    err = float((raw * MODEL_LATENT_SCALE - ref).abs().max() / ref.abs().max())
    print(f"end-to-end latent relative error vs diffusers: {err:.2e}")
    assert err <= 1e-4, err
    assert float((ref - noise).abs().max() / noise.abs().max()) > 0.05  # the pipeline really denoised

    ref_frames = ((video[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    assert frames.shape == ref_frames.shape == (n_frames, height, width, 3)
    assert np.abs(frames.astype(int) - ref_frames.astype(int)).max() <= 1

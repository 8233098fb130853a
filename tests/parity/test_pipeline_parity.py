"""The whole sampling pipeline (text encoders -> token refiner precompute -> DiT sampling with
true CFG and embedded guidance) vs diffusers' HunyuanVideoPipeline built from the same tiny
weights, with the same initial noise and schedule. Compared on the final latents (diffusers'
``output_type="latent"`` returns them in model space, i.e. raw latent x 0.476986)."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
from transformers import CLIPTextModel, LlamaModel

from hunyuan.conditioning import RefinedConditioning
from hunyuan.dit import precompute_refined_text
from hunyuan.dit.checkpoint import load_dit
from hunyuan.dit.tiny import random_state_dict, tiny_config
from hunyuan.sampling import flow_sigmas, latent_shape, seeded_noise
from hunyuan.sampling.pipeline import MODEL_LATENT_SCALE, sample_video
from hunyuan.text import (
    VIDEO,
    EncodeOptions,
    TextEncoders,
    crop_start,
    encode_prompts,
    load_clip,
    load_clip_tokenizer,
    load_llm,
    load_llm_tokenizer,
    parse_dtype,
)
from hunyuan.text.tiny import CLIP_DIR, LLAMA_DIR, clip_tokenizer_dir, llama_tokenizer_dir, write_tiny
from tests.checks import rel_err
from tests.conftest import COMFYUI_DIR
from tests.peers import diffusers_dit

PROMPT, NEGATIVE = "A red fox runs through snow, cinematic.", "blurry, low quality"
WIDTH, HEIGHT, FRAMES, STEPS = 64, 48, 9, 4
TOL = 1e-5  # fp32, the team default (measured: ~1e-7)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    write_tiny(models, comfyui=COMFYUI_DIR)
    llm_tok, clip_tok = load_llm_tokenizer(llama_tokenizer_dir(COMFYUI_DIR)), load_clip_tokenizer(clip_tokenizer_dir(COMFYUI_DIR))
    fp32 = parse_dtype("fp32")
    ours_text = TextEncoders(load_llm(models / "LLM" / LLAMA_DIR, fp32), llm_tok,
                             load_clip(models / "clip" / CLIP_DIR, fp32), clip_tok)
    cfg = tiny_config()
    sd = random_state_dict(cfg, seed=3)
    ours_dit = load_dit(dict(sd), device="cpu", dtype=torch.float32).eval()
    ref_dit = diffusers_dit(cfg, sd)
    pipe = HunyuanVideoPipeline(
        text_encoder=LlamaModel.from_pretrained(models / "LLM" / LLAMA_DIR, torch_dtype=torch.float32).eval(),
        tokenizer=llm_tok, transformer=ref_dit.eval(), vae=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=CLIPTextModel.from_pretrained(models / "clip" / CLIP_DIR, torch_dtype=torch.float32).eval(),
        tokenizer_2=clip_tok,
    )
    return ours_text, ours_dit, pipe


def ours(parts, noise, cfg_scale):
    text, dit, _ = parts
    sigmas = flow_sigmas(STEPS, 7.0)
    embeds = encode_prompts(text, [PROMPT], EncodeOptions(VIDEO), "cpu", negative=[NEGATIVE])
    refine = [precompute_refined_text(dit.txt_in, e, sigmas, device="cpu", dtype=torch.float32)
              for e in (embeds.positive, embeds.negative)]
    cond = RefinedConditioning(refine[0], refine[1])
    with torch.no_grad():
        return sample_video(dit, cond, sigmas, noise, cfg=cfg_scale, embedded_guidance=6.0, solver="euler")


def reference(parts, noise, cfg_scale):
    text, _, pipe = parts
    template = {"template": VIDEO.text, "crop_start": crop_start(text.llm_tokenizer, VIDEO)}
    return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
                num_inference_steps=STEPS, true_cfg_scale=cfg_scale, guidance_scale=6.0, latents=noise.clone(),
                prompt_template=template, output_type="latent", return_dict=False)[0]


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0], ids=["distilled", "true-cfg"])
def test_pipeline_latents_match_diffusers(parts, cfg_scale):
    noise = seeded_noise(11, latent_shape(1, WIDTH, HEIGHT, FRAMES))
    raw = ours(parts, noise, cfg_scale)
    ref = reference(parts, noise, cfg_scale)
    assert raw.shape == ref.shape == (1, 16, 3, 6, 8)
    assert rel_err(raw * MODEL_LATENT_SCALE, ref) <= TOL
    # the sampler really moved away from the noise (the comparison is not trivially noise vs noise)
    assert rel_err(raw * MODEL_LATENT_SCALE, noise) > 0.05

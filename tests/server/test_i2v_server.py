"""Image-to-video through a real ComfyUI, fp32, tiny weights, against diffusers' I2V pipelines.

The example graphs (workflows/i2v_*_api.json, shrunk) are queued over the API with the start
image the harness writes into input/; the raw latent is saved (native SaveLatent) and compared
with diffusers built from the same weight files, image and initial noise: max relative error
<= 1e-4 (the issue's bound for a whole multi-step pipeline, as in test_e2e_parity).

Text: HunyuanVideo-I2V reads the prompt with the start image (LLaVA's vision tower). Our graph
loads ComfyUI's split files (LLM single file + clip_vision/llava_llama3_vision); diffusers runs
transformers' LlavaForConditionalGeneration from the tiny full-LLaVA folder (same values) with the
folder's image processor, and picks the interleave from the DiT (4 token replace, 2 concat), as
the graph is set. SkyReels-V1 encodes text only (the plain video template).

diffusers always starts from 0.999 noise + 0.001 image latent for HunyuanVideo-I2V; Tencent only
with --i2v-stability (our node's default is off, like Tencent): the parity graphs turn it on.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    HunyuanSkyreelsImageToVideoPipeline,
    HunyuanVideoImageToVideoPipeline,
)
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import (
    DEFAULT_PROMPT_TEMPLATE as I2V_TEMPLATE,
)
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPImageProcessor, LlavaForConditionalGeneration

from hunyuan.checkpoint_io import load_state_dict
from hunyuan.dit.config import infer_config
from hunyuan.sampling import latent_shape, seeded_noise
from hunyuan.sampling.pipeline import MODEL_LATENT_SCALE
from hunyuan.text import VIDEO, crop_start
from hunyuan.text.tiny import LLAVA_DIR, TINY_VISION
from scripts.comfy_server import ROOT
from scripts.smoke_size import I2V_INPUT, shrink
from tests.checks import rel_err
from tests.peers import diffusers_dit
from tests.server.test_e2e_parity import reference_pipeline

pytestmark = pytest.mark.server

SEED, STEPS, TOL = 5, 3, 1e-4
DIT_FILES = {
    "token_replace": "hunyuan_video_v2_replace_image_to_video_720p_bf16.safetensors",
    "concat": "hunyuan_video_image_to_video_720p_bf16.safetensors",
    "skyreels": "skyreels_hunyuan_i2v_bf16.safetensors",
}


def server_graph(workflow: str, *, dit: str | None = None, image: str = I2V_INPUT, stability: bool = True,
                 mode: str = "token_replace", tag: str = "i2v") -> dict:
    graph = shrink(json.loads((ROOT / "workflows" / f"{workflow}_api.json").read_text()))
    graph["1"]["inputs"]["dtype"] = "fp32"
    graph["3"]["inputs"].update(weight_dtype="fp32", attention="sdpa", **({"dit_name": dit} if dit else {}))
    graph["4"]["inputs"]["steps"] = STEPS
    graph["6"]["inputs"]["seed"] = SEED
    graph["7"]["inputs"]["dtype"] = "fp32"
    graph["8"]["inputs"]["tiling"] = "off"
    graph["22"]["inputs"]["image"] = image
    graph["23"]["inputs"].update(stability=stability, mode=mode)
    del graph["9"], graph["10"]
    graph["30"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"latents/{tag}"}}
    return graph


def run_latent(comfy, graph: dict, node: str = "30") -> torch.Tensor:
    files = comfy.output_files(comfy.run(graph, timeout=600))
    latent = next(f for f in files if f.suffix == ".latent" and graph[node]["inputs"]["filename_prefix"] in str(f))
    return load_file(str(latent))["latent_tensor"].float()


def components(models, dit_file: str, image_condition_type):
    t2v = reference_pipeline(models)
    sd = load_state_dict(models / "diffusion_models" / dit_file)
    dit = diffusers_dit(infer_config(sd), {k: v.float() for k, v in sd.items()}, image_condition_type)
    return t2v, dit


def graph_size(graph: dict) -> tuple[int, int, int]:
    s = graph["6"]["inputs"]
    return s["width"], s["height"], s["frames"]


def hunyuan_i2v_reference(comfy, graph: dict, image_condition_type: str) -> torch.Tensor:
    models = comfy.base_dir / "models"
    t2v, dit = components(models, graph["3"]["inputs"]["dit_name"], image_condition_type)
    llava = models / "LLM" / LLAVA_DIR
    pipe = HunyuanVideoImageToVideoPipeline(
        text_encoder=LlavaForConditionalGeneration.from_pretrained(llava, torch_dtype=torch.float32).eval(),
        tokenizer=t2v.tokenizer, transformer=dit, vae=t2v.vae, scheduler=FlowMatchEulerDiscreteScheduler(
            shift=graph["4"]["inputs"]["shift"]), text_encoder_2=t2v.text_encoder_2, tokenizer_2=t2v.tokenizer_2,
        image_processor=CLIPImageProcessor.from_pretrained(llava))
    tokens = (TINY_VISION["image_size"] // TINY_VISION["patch_size"]) ** 2
    template = {**I2V_TEMPLATE, "image_emb_len": tokens, "image_emb_end": I2V_TEMPLATE["image_emb_start"] + tokens}
    width, height, frames = graph_size(graph)
    with torch.no_grad():
        return pipe(image=Image.open(comfy.base_dir / "input" / I2V_INPUT).convert("RGB"),
                    prompt=graph["2"]["inputs"]["prompt"], prompt_template=template, height=height, width=width,
                    num_frames=frames, num_inference_steps=STEPS, guidance_scale=graph["6"]["inputs"]["embedded_guidance"],
                    latents=seeded_noise(SEED, latent_shape(1, width, height, frames)), output_type="latent",
                    return_dict=False)[0]


def test_token_replace_equals_diffusers_and_keeps_the_image_latent(comfy):
    graph = server_graph("i2v_token_replace", tag="i2v_tr")
    graph["31"] = {"class_type": "HunyuanVideoVAEEncode", "inputs": {
        "vae": ["7", 0], "pixels": ["22", 0], "tiling": "off", "tile_size": 256, "tile_overlap": 64,
        "temporal_chunk": 2, "shared_norm": True}}
    graph["32"] = {"class_type": "SaveLatent", "inputs": {"samples": ["31", 0], "filename_prefix": "latents/i2v_img"}}
    ours = run_latent(comfy, graph)
    ref = hunyuan_i2v_reference(comfy, graph, "token_replace")
    assert ours.shape == ref.shape == (1, 16, 3, 6, 8)
    err = rel_err(ours * MODEL_LATENT_SCALE, ref)
    print(f"token replace latent relative error vs diffusers: {err:.2e}")
    assert err <= TOL
    image_latent = run_latent(comfy, graph, "32")
    assert torch.equal(ours[:, :, :1], image_latent)  # frame 0 is the image's own latent, bit for bit
    assert not torch.equal(ours[:, :, 1:2], image_latent)


def test_concat_v1_equals_diffusers_without_frame_zero(comfy):
    graph = server_graph("i2v_token_replace", dit=DIT_FILES["concat"], tag="i2v_concat")
    graph["2"]["inputs"]["image_interleave"] = 2  # the concat model's, as diffusers picks for it
    ours = run_latent(comfy, graph)
    ref = hunyuan_i2v_reference(comfy, graph, "latent_concat")
    assert ours.shape == ref.shape == (1, 16, 2, 6, 8)  # 9 frames -> 3 latent frames, frame 0 dropped
    err = rel_err(ours * MODEL_LATENT_SCALE, ref)
    print(f"concat (v1) latent relative error vs diffusers: {err:.2e}")
    assert err <= TOL


def test_skyreels_equals_diffusers_with_posterior_sample(comfy):
    graph = server_graph("i2v_skyreels", stability=False, tag="i2v_sky")
    ours = run_latent(comfy, graph)
    models = comfy.base_dir / "models"
    t2v, dit = components(models, graph["3"]["inputs"]["dit_name"], None)
    pipe = HunyuanSkyreelsImageToVideoPipeline(
        text_encoder=t2v.text_encoder, tokenizer=t2v.tokenizer, transformer=dit, vae=t2v.vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=graph["4"]["inputs"]["shift"]),
        text_encoder_2=t2v.text_encoder_2, tokenizer_2=t2v.tokenizer_2)
    width, height, frames = graph_size(graph)
    s, text = graph["6"]["inputs"], graph["2"]["inputs"]
    with torch.no_grad():
        ref = pipe(image=Image.open(comfy.base_dir / "input" / I2V_INPUT).convert("RGB"), prompt=text["prompt"],
                   negative_prompt=text["negative_prompt"], height=height, width=width, num_frames=frames,
                   num_inference_steps=STEPS, true_cfg_scale=s["cfg"], guidance_scale=s["embedded_guidance"],
                   generator=torch.Generator().manual_seed(SEED),  # the posterior sample's draw, as ours
                   latents=seeded_noise(SEED, latent_shape(1, width, height, frames)),
                   prompt_template={"template": VIDEO.text, "crop_start": crop_start(t2v.tokenizer, VIDEO)},
                   output_type="latent", return_dict=False)[0]
    assert ours.shape == ref.shape == (1, 16, 3, 6, 8)
    err = rel_err(ours * MODEL_LATENT_SCALE, ref)
    print(f"SkyReels latent relative error vs diffusers: {err:.2e}")
    assert err <= TOL

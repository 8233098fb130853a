"""LLaVA's vision tower vs ComfyUI's own CLIP vision model and LLaVA projector (comfy/clip_model.py).

What ComfyUI's TextEncodeHunyuanVideo_ImageToVideo reads is the CLIP vision output's
``mm_projected``; this pins that our tower computes the same from the same pixels (fp32), and
that the pixels themselves differ from ComfyUI's (its preprocessing resizes differently).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from hunyuan.text import load_vision, parse_dtype
from hunyuan.text.tiny import TINY_VISION, VISION_FILE
from hunyuan.text.vision import CLIP_MEAN, CLIP_STD, CLIP_VIT_L_336, pixel_values
from tests.checks import FP32_RTOL, rel_err


@pytest.fixture(scope="module")
def models(tiny_text_models):
    return tiny_text_models


def comfy_tower(path):
    """ComfyUI's own CLIP vision model and LLaVA projector (comfy/clip_model.py) with the tiny widths.

    ComfyUI's CLIPVisionLoader picks a config by layer count (23+ layers, 577 positions for LLaVA)
    and its projector is 4096 wide, so the tiny file cannot go through the loader: the modules are
    built here with the tiny config and load the tiny ComfyUI file strictly."""
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.clip_model
    import comfy.ops

    config = {**CLIP_VIT_L_336, **TINY_VISION, "model_type": "clip_vision_model"}
    ops = comfy.ops.manual_cast
    tower = comfy.clip_model.CLIPVisionModelProjection(config, torch.float32, "cpu", ops)
    projector = comfy.clip_model.LlavaProjector(config["hidden_size"], 32, torch.float32, "cpu", ops)
    sd = {k: v.float() for k, v in load_file(str(path)).items()}
    tower.load_state_dict({k: v for k, v in sd.items() if not k.startswith("multi_modal_projector.")}, strict=True)
    projector.load_state_dict({k[len("multi_modal_projector."):]: v for k, v in sd.items()
                               if k.startswith("multi_modal_projector.")}, strict=True)
    return tower.eval(), projector.eval()


def test_tower_matches_comfyui_and_preprocessing_is_diffusers(models):
    """Same pixels: our tower + projector = ComfyUI's (the mm_projected its TextEncodeHunyuanVideo_ImageToVideo
    reads), fp32. The pixels differ: ComfyUI resizes with torch's antialiased bicubic, we (like Tencent
    and diffusers) with CLIPImageProcessor's PIL bicubic; an image already at the tower's size is the same."""
    path = models / "clip_vision" / VISION_FILE
    ours = load_vision(path, parse_dtype("fp32"))
    tower, projector = comfy_tower(path)  # first: it puts ComfyUI on the CPU before comfy modules load
    import comfy.clip_vision

    image = torch.randint(0, 256, (1, 80, 120, 3), generator=torch.Generator().manual_seed(0)).float() / 255
    pixels = pixel_values(image, ours.image_size)
    with torch.no_grad():
        _, penultimate, _, _ = tower(pixel_values=pixels, intermediate_output=-2)
        assert rel_err(ours(pixels), projector(penultimate)) <= FP32_RTOL
    theirs = comfy.clip_vision.clip_preprocess(image, size=56, mean=list(CLIP_MEAN), std=list(CLIP_STD))
    resized = rel_err(theirs, pixels)
    print(f"ComfyUI's vs our preprocessing of an 80x120 image: relative difference {resized:.2e}")
    assert resized > 1e-3
    square = image[:, :56, :56]
    same = comfy.clip_vision.clip_preprocess(square, size=56, mean=list(CLIP_MEAN), std=list(CLIP_STD))
    assert rel_err(same, pixel_values(square, 56)) <= FP32_RTOL

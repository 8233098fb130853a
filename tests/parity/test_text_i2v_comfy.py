"""The I2V text path vs ComfyUI's own modules (comfy/clip_model.py, comfy/text_encoders/hunyuan_video.py).

What ComfyUI's TextEncodeHunyuanVideo_ImageToVideo reads is the CLIP vision output's
``mm_projected``; this pins that our tower computes the same from the same pixels (fp32), that
the pixels themselves differ from ComfyUI's (its preprocessing resizes differently), and where
ComfyUI's I2V text encoding (HunyuanVideoClipModel) agrees with ours and where it does not.
"""

from __future__ import annotations

import ast

import pytest
import torch
from safetensors.torch import load_file

from hunyuan.text import (
    VIDEO_I2V,
    EncodeOptions,
    TextEncoders,
    encode_prompts_image,
    load_clip,
    load_clip_tokenizer,
    load_llm,
    load_llm_tokenizer,
    load_vision,
    parse_dtype,
)
from hunyuan.text.tiny import (
    CLIP_FILE,
    LLAMA_FILE,
    TINY_CLIP,
    TINY_LLAMA,
    TINY_VISION,
    VISION_FILE,
    clip_tokenizer_dir,
    llama_tokenizer_dir,
)
from hunyuan.text.vision import CLIP_MEAN, CLIP_STD, CLIP_VIT_L_336, pixel_values
from tests.checks import FP32_RTOL, rel_err
from tests.conftest import COMFYUI_DIR

PROMPT = "A red fox turns its head and trots towards the camera through the snow."


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


def comfy_constant(relative: str, name: str):
    """A module-level constant of a ComfyUI file, read without importing it (comfy_extras needs a running ComfyUI)."""
    tree = ast.parse((COMFYUI_DIR / relative).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {relative}")


def comfy_text_model(models, monkeypatch):
    """ComfyUI's HunyuanVideoClipModel (LLaMA layer -3 + CLIP-L) with the tiny widths, tiny files loaded."""
    import comfy.text_encoders.llama as llama
    from comfy.text_encoders.hunyuan_video import HunyuanVideoClipModel

    monkeypatch.setattr(llama.Llama2Config, "head_dim", TINY_LLAMA["head_dim"])  # a class attribute there
    llama_widths = {k: v for k, v in TINY_LLAMA.items() if k != "head_dim"}
    clip_widths = {k: TINY_CLIP[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "projection_dim")}
    model = HunyuanVideoClipModel(dtype_llama=torch.float32, device="cpu", dtype=torch.float32, model_options={
        "llama_model_config": {**llama_widths, "max_position_embeddings": 1024}, "clip_l_model_config": clip_widths})
    for file in (models / "text_encoders" / LLAMA_FILE, models / "text_encoders" / CLIP_FILE):
        missing, _ = model.load_sd({k: v.float() for k, v in load_file(str(file)).items()})
        assert not [k for k in missing if "position_ids" not in k and "logit_scale" not in k]
    return model.eval()


def test_comfyui_i2v_text_node_keeps_the_same_tokens_but_eot_for_the_blank_line(models, monkeypatch):
    """ComfyUI's TextEncodeHunyuanVideo_ImageToVideo path (its tokens-with-image format, its encoder and
    crop) on the same weights and image tokens: the image tokens and the prompt's tokens equal ours;
    its last token is the user turn's <|eot_id|> where Tencent/diffusers (and we) keep the blank line
    after the assistant header; it does not pad. Token ids are the reference tokenizer's (ComfyUI's
    own Llama tokenizer misreads under transformers 5, see test_text_comfy)."""
    from comfy.sd1_clip import SDTokenizer

    assert comfy_constant("comfy_extras/nodes_hunyuan.py", "PROMPT_TEMPLATE_ENCODE_VIDEO_I2V") == VIDEO_I2V.text
    encoders = TextEncoders(load_llm(models / "text_encoders" / LLAMA_FILE, parse_dtype("fp32")),
                            load_llm_tokenizer(llama_tokenizer_dir(COMFYUI_DIR)),
                            load_clip(models / "text_encoders" / CLIP_FILE, parse_dtype("fp32")),
                            load_clip_tokenizer(clip_tokenizer_dir(COMFYUI_DIR)))
    vision = load_vision(models / "clip_vision" / VISION_FILE, parse_dtype("fp32"))
    tower, projector = comfy_tower(models / "clip_vision" / VISION_FILE)
    model = comfy_text_model(models, monkeypatch)
    image = torch.randint(0, 256, (1, 64, 64, 3), generator=torch.Generator().manual_seed(1)).float() / 255
    with torch.no_grad():
        mm_projected = projector(tower(pixel_values=pixel_values(image, 56), intermediate_output=-2)[1])
    interleave = 2
    ids = encoders.llm_tokenizer(VIDEO_I2V.apply(PROMPT))["input_ids"]
    pairs = [({"type": "embedding", "data": mm_projected[0], "original_type": "image", "image_interleave": interleave}
              if t == 128257 else t, 1.0) for t in ids]  # as HunyuanVideoTokenizer.tokenize_with_weights puts it
    tokens = {"l": SDTokenizer().tokenize_with_weights(PROMPT), "llama": [pairs]}
    with torch.no_grad():
        theirs, pooled, extra = model.encode_token_weights(tokens)
    ours = encode_prompts_image(encoders, vision, [PROMPT], image, EncodeOptions(VIDEO_I2V), interleave, "cpu").positive
    prompt_tokens = len(encoders.llm_tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    shared = 16 // interleave + prompt_tokens
    assert theirs.shape[1] == shared + 1 and "attention_mask" not in extra  # + <|eot_id|>, unpadded
    assert rel_err(ours.states[:, :shared], theirs[:, :shared]) <= FP32_RTOL
    assert rel_err(ours.states[:, shared], theirs[:, shared]) > 1e-2  # "\n\n" (ours) vs <|eot_id|> (ComfyUI)
    assert rel_err(ours.pooled, pooled) <= FP32_RTOL

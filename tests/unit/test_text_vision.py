"""LLaVA's vision tower: every layout loads the same tower, real shapes read right, bad sources named."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from hunyuan.checkpoint_io import CheckpointError
from hunyuan.text import load_vision, parse_dtype
from hunyuan.text.layouts import FoundWeights
from hunyuan.text.tiny import (
    LLAMA_DIR,
    LLAMA_FILE,
    LLAVA_DIR,
    VISION_FILE,
    llava_vision_shapes,
)
from hunyuan.text.vision import (
    CLIP_VIT_L_336,
    find_vision,
    to_pil,
    vision_fields,
)
from tests.checks import assert_same_weights


@pytest.fixture(scope="module")
def models(tiny_text_models):
    return tiny_text_models


def test_folder_split_file_and_new_transformers_names_load_the_same_tower(models, tmp_path):
    fp32 = parse_dtype("fp32")
    folder = load_vision(models / "LLM" / LLAVA_DIR, fp32)
    split = load_vision(models / "clip_vision" / VISION_FILE, fp32)
    # transformers 4.52+ saves a LLaVA as model.vision_tower.* / model.multi_modal_projector.*
    shard = load_file(str(models / "LLM" / LLAVA_DIR / "model-00003-of-00003.safetensors"))
    save_file({"model." + k: v for k, v in shard.items()}, str(tmp_path / "llava_new.safetensors"))
    new = load_vision(tmp_path / "llava_new.safetensors", fp32)
    assert_same_weights(split, folder)
    assert_same_weights(new, folder)
    assert folder.tokens == 16 and folder.image_size == 56 and folder.feature_layer == -2
    out = folder(torch.randn(2, 3, 56, 56))
    assert out.shape == (2, 16, 32)  # 4 x 4 patches, class token dropped, in the LLM's width


def test_dtype_choices(models):
    path = models / "clip_vision" / VISION_FILE
    assert load_vision(path, parse_dtype("auto")).projector.linear_1.weight.dtype == torch.float16  # the file's
    fp8 = load_vision(path, parse_dtype("fp8_e4m3fn (bf16 compute)"))  # fp8 is for the LLM only
    assert {p.dtype for p in fp8.parameters()} == {torch.bfloat16}


def test_real_tower_shapes_are_read_from_the_weights():
    """ViT-L/14-336 + projector into Llama-3-8B's width: read without allocating (meta tensors)."""
    shapes = llava_vision_shapes({**CLIP_VIT_L_336}, 4096)
    tower = {k[len("vision_tower."):]: torch.empty(s, device="meta") for k, s in shapes.items()
             if k.startswith("vision_tower.")}
    fields = vision_fields(FoundWeights(source=None, tensors=tower))
    assert (fields["image_size"], fields["patch_size"], fields["num_hidden_layers"]) == (336, 14, 24)
    assert (fields["hidden_size"], fields["num_attention_heads"], fields["intermediate_size"]) == (1024, 16, 4096)
    assert (fields["image_size"] // fields["patch_size"]) ** 2 == 576


def test_text_only_sources_are_named(models):
    with pytest.raises(CheckpointError, match=f"{LLAMA_DIR}.*is not a full LLaVA checkpoint"):
        find_vision(models / "LLM" / LLAMA_DIR)
    with pytest.raises(CheckpointError, match=f"{LLAMA_FILE}.*has no LLaVA vision tower"):
        find_vision(models / "text_encoders" / LLAMA_FILE)


def test_grayscale_and_rgba_images_become_rgb():
    rgb = torch.rand(1, 20, 30, 3)
    rgba = torch.cat([rgb, torch.rand(1, 20, 30, 1)], dim=-1)
    assert to_pil(rgba)[0].tobytes() == to_pil(rgb)[0].tobytes()
    gray = to_pil(rgb[..., :1])[0]
    assert gray.mode == "RGB" and gray.getpixel((3, 4))[0] == gray.getpixel((3, 4))[2]
    with pytest.raises(ValueError, match=r"image has shape \(20, 30, 3\)"):
        to_pil(rgb[0])


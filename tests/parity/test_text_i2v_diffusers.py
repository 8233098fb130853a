"""Image-conditioned text encoding (HunyuanVideo-I2V) vs diffusers' HunyuanVideoImageToVideoPipeline.

Same tiny weights, loaded independently: diffusers' text encoder is transformers'
``LlavaForConditionalGeneration.from_pretrained`` on the tiny full-LLaVA folder, with the
folder's own ``preprocessor_config.json`` (``CLIPImageProcessor.from_pretrained``); ours is
hunyuan.text from the same folder and from ComfyUI's split files (LLM single file + clip_vision
file). Real Llama-3 and CLIP tokenizers, fp32, bound FP32_RTOL on states and pooled, exact masks.

The tiny tower sees 56-pixel images (16 image tokens, not 576): diffusers takes the count from its
``prompt_template`` (``image_emb_len``/``image_emb_end``), given here for the tiny tower; every
other template number (crop_start 103, image token at 5) is the real one, measured and asserted.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import HunyuanVideoImageToVideoPipeline
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE
from transformers import CLIPImageProcessor, CLIPTextModel, LlavaForConditionalGeneration

from hunyuan.text import (
    VIDEO_I2V,
    EncodeOptions,
    TextEncoders,
    crop_start,
    load_clip,
    load_clip_tokenizer,
    load_llm,
    load_llm_tokenizer,
    parse_dtype,
)
from hunyuan.text.encode_image import encode_prompts_image
from hunyuan.text.tiny import (
    CLIP_DIR,
    LLAMA_FILE,
    LLAVA_DIR,
    VISION_FILE,
    clip_tokenizer_dir,
    llama_tokenizer_dir,
)
from hunyuan.text.vision import load_vision, to_pil
from tests.checks import FP32_RTOL, rel_err
from tests.conftest import COMFYUI_DIR

PROMPT = "A red fox turns its head and trots towards the camera through the snow."
TINY_TOKENS = 16


def _image(seed: int, height: int, width: int) -> torch.Tensor:
    """A ComfyUI IMAGE with 8-bit values (as LoadImage gives), not square, so resize and crop matter."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, height, width, 3), generator=gen).float() / 255


@pytest.fixture(scope="module")
def setup(tiny_text_models):
    models = tiny_text_models
    llm_tok, clip_tok = load_llm_tokenizer(llama_tokenizer_dir(COMFYUI_DIR)), load_clip_tokenizer(clip_tokenizer_dir(COMFYUI_DIR))
    fp32 = parse_dtype("fp32")
    clip = load_clip(models / "clip" / CLIP_DIR, fp32)
    folder = models / "LLM" / LLAVA_DIR
    layouts = {
        "llava_folder": (TextEncoders(load_llm(folder, fp32), llm_tok, clip, clip_tok), load_vision(folder, fp32)),
        "comfy_split": (TextEncoders(load_llm(models / "text_encoders" / LLAMA_FILE, fp32), llm_tok, clip, clip_tok),
                        load_vision(models / "clip_vision" / VISION_FILE, fp32)),
    }
    pipe = HunyuanVideoImageToVideoPipeline(
        text_encoder=LlavaForConditionalGeneration.from_pretrained(folder, torch_dtype=torch.float32).eval(),
        tokenizer=llm_tok, transformer=None, vae=None, scheduler=None,
        text_encoder_2=CLIPTextModel.from_pretrained(models / "clip" / CLIP_DIR, torch_dtype=torch.float32).eval(),
        tokenizer_2=clip_tok, image_processor=CLIPImageProcessor.from_pretrained(folder))
    return layouts, pipe


def reference(pipe, image: torch.Tensor, prompt: str, interleave: int):
    template = {**DEFAULT_PROMPT_TEMPLATE, "image_emb_len": TINY_TOKENS,
                "image_emb_end": DEFAULT_PROMPT_TEMPLATE["image_emb_start"] + TINY_TOKENS}
    with torch.no_grad():
        states, pooled, mask = pipe.encode_prompt(image=to_pil(image)[0], prompt=prompt, prompt_template=template,
                                                  device="cpu", image_embed_interleave=interleave)
    return states, pooled, mask


def test_template_numbers_are_diffusers(setup):
    """Our I2V template is diffusers' (and Tencent's), and our measured crop is its crop_start 103."""
    layouts, _ = setup
    tokenizer = layouts["llava_folder"][0].llm_tokenizer
    assert VIDEO_I2V.text == DEFAULT_PROMPT_TEMPLATE["template"]
    assert crop_start(tokenizer, VIDEO_I2V) == DEFAULT_PROMPT_TEMPLATE["crop_start"] == 103
    ids = tokenizer(VIDEO_I2V.apply(PROMPT))["input_ids"]
    assert ids.index(tokenizer.convert_tokens_to_ids("<image>")) == DEFAULT_PROMPT_TEMPLATE["image_emb_start"]


@pytest.mark.parametrize("layout", ["llava_folder", "comfy_split"])
@pytest.mark.parametrize("interleave", [4, 2])
def test_image_prompt_matches_diffusers(setup, layout, interleave):
    layouts, pipe = setup
    encoders, vision = layouts[layout]
    image = _image(1, 72, 96)
    ours = encode_prompts_image(encoders, vision, [PROMPT], image, EncodeOptions(VIDEO_I2V), interleave, "cpu").positive
    states, pooled, mask = reference(pipe, image, PROMPT, interleave)
    assert ours.states.shape == states.shape == (1, TINY_TOKENS // interleave + 256 - 4, 32)
    assert torch.equal(ours.mask, mask.bool())
    assert rel_err(ours.states, states) <= FP32_RTOL
    assert rel_err(ours.pooled, pooled) <= FP32_RTOL


def test_truncated_prompt_matches_diffusers(setup):
    """A prompt longer than the budget loses the assistant header; both drop the same 4 last tokens."""
    layouts, pipe = setup
    encoders, vision = layouts["llava_folder"]
    prompt = " ".join(["snow"] * 400)
    image = _image(2, 64, 64)
    ours = encode_prompts_image(encoders, vision, [prompt], image, EncodeOptions(VIDEO_I2V), 4, "cpu").positive
    states, _, mask = reference(pipe, image, prompt, 4)
    assert ours.states.shape == states.shape
    assert torch.equal(ours.mask, mask.bool()) and bool(mask.all())
    assert rel_err(ours.states, states) <= FP32_RTOL


def test_negative_uses_a_black_image_and_interleave_2(setup):
    """diffusers' true-CFG pass: the negative prompt with a black image and encode_prompt's default interleave 2."""
    layouts, pipe = setup
    encoders, vision = layouts["llava_folder"]
    image = _image(3, 64, 80)
    embeds = encode_prompts_image(encoders, vision, [PROMPT], image, EncodeOptions(VIDEO_I2V), 4, "cpu",
                                  negative=["blurry, static"])
    states, pooled, mask = reference(pipe, torch.zeros_like(image), "blurry, static", 2)
    assert embeds.negative.states.shape == states.shape
    assert torch.equal(embeds.negative.mask, mask.bool())
    assert rel_err(embeds.negative.states, states) <= FP32_RTOL
    assert rel_err(embeds.negative.pooled, pooled) <= FP32_RTOL


def test_the_image_changes_the_states(setup):
    """Another image changes the image tokens and, through attention, the prompt's tokens too."""
    layouts, _ = setup
    encoders, vision = layouts["llava_folder"]
    options = EncodeOptions(VIDEO_I2V)
    a = encode_prompts_image(encoders, vision, [PROMPT], _image(4, 64, 64), options, 4, "cpu").positive
    b = encode_prompts_image(encoders, vision, [PROMPT], _image(5, 64, 64), options, 4, "cpu").positive
    image_tokens = TINY_TOKENS // 4
    assert rel_err(a.states[:, :image_tokens], b.states[:, :image_tokens]) > 1e-2
    assert rel_err(a.states[:, image_tokens:], b.states[:, image_tokens:]) > 1e-3
    assert torch.equal(a.pooled, b.pooled)  # CLIP-L reads only the prompt


def test_image_marker_in_the_prompt_is_named(setup):
    layouts, _ = setup
    encoders, vision = layouts["llava_folder"]
    with pytest.raises(ValueError, match="hold 2 '<image>' tokens.*remove '<image>' from the prompt text"):
        encode_prompts_image(encoders, vision, ["a fox <image> in snow"], _image(6, 56, 56), EncodeOptions(VIDEO_I2V),
                             4, "cpu")


def test_a_batch_equals_its_prompts_one_by_one(setup):
    """Each row finds its own assistant header (one prompt truncated, one not): a batch is its rows
    (diffusers' own search assumes one prompt when a header is missing, so the rows are checked here)."""
    layouts, _ = setup
    encoders, vision = layouts["comfy_split"]
    prompts, image, options = [PROMPT, " ".join(["snow"] * 400)], _image(7, 60, 60), EncodeOptions(VIDEO_I2V)
    both = encode_prompts_image(encoders, vision, prompts, image, options, 4, "cpu").positive
    for i, prompt in enumerate(prompts):
        one = encode_prompts_image(encoders, vision, [prompt], image, options, 4, "cpu").positive
        assert torch.equal(both.mask[i:i + 1], one.mask)
        assert rel_err(both.states[i:i + 1], one.states) <= FP32_RTOL
    assert not bool(both.mask[0].all()) and bool(both.mask[1].all())

"""Parity of our text encoding with diffusers' HunyuanVideoPipeline.encode_prompt.

Same tiny weights (loaded independently: ours through hunyuan.text, diffusers' through
transformers' from_pretrained), the REAL Llama-3 and CLIP tokenizers, fp32.

Budget: diffusers' ``max_sequence_length`` counts tokens AFTER ``crop_start`` (it tokenizes to
``max_sequence_length + crop_start``), which is our ``prompt_tokens``; both are 256 here, so the
two outputs have the same length. (The kijai wrapper's 256 includes the template instead.)
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from transformers import CLIPTextModel, LlamaModel

from hunyuan.text import (
    IMAGE,
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

PROMPTS = ["A cat walks on the grass, realistic style.", "Two dogs play with a red ball in slow motion"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    write_tiny(models, comfyui=COMFYUI_DIR)
    llm_tok, clip_tok = load_llm_tokenizer(llama_tokenizer_dir(COMFYUI_DIR)), load_clip_tokenizer(clip_tokenizer_dir(COMFYUI_DIR))
    fp32 = parse_dtype("fp32")
    ours = TextEncoders(load_llm(models / "LLM" / LLAMA_DIR, fp32), llm_tok,
                        load_clip(models / "clip" / CLIP_DIR, fp32), clip_tok)
    ref_llm = LlamaModel.from_pretrained(models / "LLM" / LLAMA_DIR, torch_dtype=torch.float32).eval()
    ref_clip = CLIPTextModel.from_pretrained(models / "clip" / CLIP_DIR, torch_dtype=torch.float32).eval()
    pipe = HunyuanVideoPipeline(text_encoder=ref_llm, tokenizer=llm_tok, transformer=None, vae=None,
                                scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder_2=ref_clip,
                                tokenizer_2=clip_tok)
    return ours, pipe


def test_video_template_is_diffusers_default():
    assert VIDEO.text == DEFAULT_PROMPT_TEMPLATE["template"]


@pytest.mark.parametrize("template", [VIDEO, IMAGE], ids=["video", "image"])
def test_encode_matches_diffusers(setup, template):
    ours, pipe = setup
    crop = crop_start(ours.llm_tokenizer, template)
    with torch.no_grad():
        ref_states, ref_pooled, ref_mask = pipe.encode_prompt(
            PROMPTS, prompt_template={"template": template.text, "crop_start": crop},
            device=torch.device("cpu"), dtype=torch.float32, max_sequence_length=256)
    got = encode_prompts(ours, PROMPTS, EncodeOptions(template), "cpu").positive
    assert got.states.shape == ref_states.shape == (2, 256, 32)
    assert torch.equal(got.mask, ref_mask.bool())
    assert got.mask.sum().item() > 0 and not got.mask.all()
    assert rel_err(got.states, ref_states) <= 1e-6
    assert rel_err(got.pooled, ref_pooled) <= 1e-6
    assert got.pooled.shape == (2, 32)


def test_skip_layer_and_final_norm_match_reference(setup):
    ours, pipe = setup
    crop = crop_start(ours.llm_tokenizer, VIDEO)
    template = {"template": VIDEO.text, "crop_start": crop}
    with torch.no_grad():
        ref1, mask = pipe._get_llama_prompt_embeds(PROMPTS, template, device=torch.device("cpu"),
                                                   dtype=torch.float32, num_hidden_layers_to_skip=1)
        ref2, _ = pipe._get_llama_prompt_embeds(PROMPTS, template, device=torch.device("cpu"), dtype=torch.float32)
    got1 = encode_prompts(ours, PROMPTS, EncodeOptions(VIDEO, hidden_state_skip_layer=1), "cpu").positive
    assert rel_err(got1.states, ref1) <= 1e-6
    got_norm = encode_prompts(ours, PROMPTS, EncodeOptions(VIDEO, apply_final_norm=True), "cpu").positive
    with torch.no_grad():
        ref_norm = pipe.text_encoder.norm(ref2)
    assert rel_err(got_norm.states, ref_norm) <= 1e-6
    assert rel_err(got1.states, ref2) > 1e-2  # the layer choice really changes the result


def test_negative_prompt_equals_its_own_positive_encoding(setup):
    ours, _ = setup
    both = encode_prompts(ours, PROMPTS, EncodeOptions(VIDEO), "cpu", negative=["blurry, low quality"])
    alone = encode_prompts(ours, ["blurry, low quality"], EncodeOptions(VIDEO), "cpu").positive
    assert both.negative.states.shape[0] == 2
    assert torch.equal(both.negative.states[1], alone.states[0])
    assert torch.equal(both.negative.pooled[0], alone.pooled[0])

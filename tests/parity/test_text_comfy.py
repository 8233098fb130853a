"""Parity with ComfyUI's own HunyuanVideo text path (comfy/text_encoders/llama.py, hunyuan_video.py).

ComfyUI hard-codes Llama-8B widths in ``Llama2Config`` (and ``head_dim`` is a class attribute),
so its CLIPLoader cannot load our tiny files; here ComfyUI's Llama module is built directly with
the tiny widths, loads our tiny ComfyUI-layout single file strictly, and its ``intermediate_output=-3``
hidden state (what native CLIPTextEncode uses) must equal ours on the real prompt tokens.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from tokenizers import Tokenizer

from hunyuan.text import (
    IMAGE,
    VIDEO,
    EncodeOptions,
    crop_start,
    load_clip_tokenizer,
    load_llm,
    load_llm_tokenizer,
    parse_dtype,
)
from hunyuan.text.encode import encode_llm
from hunyuan.text.tiny import LLAMA_FILE, TINY_LLAMA, clip_tokenizer_dir, llama_tokenizer_dir, write_tiny
from tests.checks import rel_err
from tests.conftest import COMFYUI_DIR

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "A panda eats bamboo in the rain, cinematic lighting."
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


@pytest.fixture(scope="module")
def single_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_tiny(root, comfyui=COMFYUI_DIR)
    return root / "text_encoders" / LLAMA_FILE


def comfy_llama(sd: dict):
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.ops
    import comfy.text_encoders.llama as llama

    widths = {k: v for k, v in TINY_LLAMA.items() if k != "head_dim"}
    config = llama.Llama2Config(**widths, max_position_embeddings=1024)
    config.head_dim = TINY_LLAMA["head_dim"]  # a class attribute (128) in ComfyUI, not a field
    model = llama.Llama2_(config, device="cpu", dtype=torch.float32, ops=comfy.ops.manual_cast)
    missing, unexpected = model.load_state_dict({k[len("model."):]: v.float() for k, v in sd.items()}, strict=True)
    assert not missing and not unexpected
    return model.eval()


def pack_module(name: str):
    """Import one of the pack's nodes/ modules the way ComfyUI does: as a package named after the folder."""
    if str(ROOT.parent) not in sys.path:
        sys.path.insert(0, str(ROOT.parent))
    return importlib.import_module(f"{ROOT.name}.{name}")


def native_hidden(single_file, tokenizer, prompts: list[str]) -> list[torch.Tensor]:
    """What native CLIPTextEncode keeps per prompt: layer -3 states of prompt tokens + <|eot_id|>."""
    peer = comfy_llama(load_file(single_file))
    crop = crop_start(tokenizer, VIDEO)
    out = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer(VIDEO.apply(prompt))["input_ids"]])
        with torch.no_grad():
            _, hidden = peer(ids, attention_mask=torch.ones_like(ids), intermediate_output=-3,
                             final_layer_norm_intermediate=False)
        out.append(hidden[:, crop:])
    return out


def test_single_file_hidden_states_match_comfyui(single_file):
    tokenizer = load_llm_tokenizer(llama_tokenizer_dir(COMFYUI_DIR))
    ids = torch.tensor([tokenizer(VIDEO.apply(PROMPT))["input_ids"]])
    peer = comfy_llama(load_file(single_file))
    with torch.no_grad():
        _, hidden = peer(ids, attention_mask=torch.ones_like(ids), intermediate_output=-3,
                         final_layer_norm_intermediate=False)
    crop = crop_start(tokenizer, VIDEO)
    ours = load_llm(single_file, parse_dtype("fp32"))
    states, mask = encode_llm(ours, tokenizer, [PROMPT], EncodeOptions(VIDEO), "cpu")
    n = int(mask.sum())
    assert n == ids.shape[1] - crop  # prompt tokens + <|eot_id|>, the same span native encoding keeps
    assert rel_err(states[0, :n], hidden[0, crop:]) <= 1e-5


def reference_ids(text: str) -> list[int]:
    """tokenizer.json run by the tokenizers library alone: the pipeline the reference (Tencent's
    AutoTokenizer under transformers 4.x, diffusers) applies, with no transformers class in between."""
    return Tokenizer.from_file(str(llama_tokenizer_dir(COMFYUI_DIR) / "tokenizer.json")).encode(text).ids


def test_our_template_ids_are_the_references():
    tokenizer = load_llm_tokenizer(llama_tokenizer_dir(COMFYUI_DIR))
    for template in (VIDEO, IMAGE):
        text = template.apply(PROMPT)
        ours = tokenizer(text)["input_ids"]
        assert ours == reference_ids(text)
        # <|begin_of_text|> <|start_header_id|> system <|end_header_id|> "\n\n" Describe
        assert ours[:6] == [128000, 128006, 9125, 128007, 271, 75885]
        crop = crop_start(tokenizer, template)
        assert ours[crop - 4:crop] == [128006, 882, 128007, 271]  # <|start_header_id|>user<|end_header_id|>\n\n


def test_clip_ids_are_the_references():
    """CLIP-L's BPE: ids as transformers 4.57's CLIPTokenizer (the reference's) gives them, under 4.x and 5.x."""
    tokenizer = load_clip_tokenizer(clip_tokenizer_dir(COMFYUI_DIR))
    ids = tokenizer("A cat walks on the grass, realistic style. Two dogs!")["input_ids"]
    assert ids == [49406, 320, 2368, 8192, 525, 518, 5922, 267, 16157, 1844, 269, 1237, 3255, 256, 49407]
    padded = tokenizer("a cat", max_length=6, padding="max_length", truncation=True)["input_ids"]
    assert padded == [49406, 320, 2368, 49407, 49407, 49407]


def test_comfyui_template_and_crop_match_ours():
    """ComfyUI 0.3.75 tokenizes the template like us under transformers 4.x; under 5.x its ids move.

    ComfyUI loads its llama_tokenizer folder with transformers' ``LlamaTokenizerFast``. Under
    transformers 5 that name is ``LlamaTokenizer``, which builds a SentencePiece-style (Metaspace)
    pipeline around tokenizer.json's byte-level BPE vocabulary and drops every space and newline:
    the ids part from ours at index 4, the "\n\n" after the system header. That is ComfyUI's native
    text path (DualCLIPLoader + CLIPTextEncode) misreading prompts; ours stay the reference's.
    """
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    from comfy.text_encoders.hunyuan_video import HunyuanVideoTokenizer

    native = HunyuanVideoTokenizer()
    assert native.llama_template == VIDEO.text
    pairs = native.tokenize_with_weights(PROMPT)["llama"][0]
    native_ids = [int(p[0]) for p in pairs]
    tokenizer = load_llm_tokenizer(llama_tokenizer_dir(COMFYUI_DIR))
    text = VIDEO.apply(PROMPT)
    ours = tokenizer(text)["input_ids"]
    assert ours == reference_ids(text)
    if TRANSFORMERS_MAJOR < 5:
        assert native_ids == ours
        # ComfyUI crops after "<|start_header_id|>user<|end_header_id|>\n\n" (ids 128006, 882, 128007, 271).
        crop = crop_start(tokenizer, VIDEO)
        assert native_ids[crop - 4:crop] == [128006, 882, 128007, 271]
    else:
        first = next(i for i, (a, b) in enumerate(zip(native_ids, ours, strict=False)) if a != b)
        assert first == 4 and ours[4] == 271
        decoded = Tokenizer.from_file(str(llama_tokenizer_dir(COMFYUI_DIR) / "tokenizer.json")).decode(
            native_ids, skip_special_tokens=False)
        assert decoded == "<|begin_of_text|>" + re.sub(r"\s", "", text)


def test_bridge_turns_native_conditioning_into_our_embeds(single_file):
    """Native CONDITIONING (unpadded, mask dropped when full) -> our TextEmbeds == our own encoding."""
    tokenizer = load_llm_tokenizer(llama_tokenizer_dir(COMFYUI_DIR))
    prompts = [PROMPT, "a dog"]
    native = native_hidden(single_file, tokenizer, prompts)
    pooled = torch.randn(2, 32)
    conditioning = [[native[0], {"pooled_output": pooled[:1]}],
                    [native[1], {"pooled_output": pooled[1:], "attention_mask": torch.ones(1, native[1].shape[1])}]]
    bridged = pack_module("nodes.text").conditioning_to_embeds(conditioning, "positive")
    ours_states, ours_mask = encode_llm(load_llm(single_file, parse_dtype("fp32")), tokenizer, prompts,
                                        EncodeOptions(VIDEO), "cpu")
    length = bridged.states.shape[1]
    assert length == native[0].shape[1] > native[1].shape[1]
    assert torch.equal(bridged.mask, ours_mask[:, :length])
    assert torch.equal(bridged.pooled, pooled)
    keep = bridged.mask
    assert rel_err(bridged.states[keep], ours_states[:, :length][keep]) <= 1e-5
    assert bridged.states[~keep].abs().max() == 0


def test_bridge_rejects_conditioning_without_pooled_output():
    with pytest.raises(ValueError, match="positive has no pooled_output.*hunyuan_video"):
        pack_module("nodes.text").conditioning_to_embeds([[torch.zeros(1, 3, 32), {}]], "positive")

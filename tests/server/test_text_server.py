"""Text-encoder nodes in a real ComfyUI: every tiny layout loads and encodes, bad choices explain themselves."""

from __future__ import annotations

import pytest

from hunyuan.text.tiny import CLIP_DIR, CLIP_FILE, LLAMA_DIR, LLAMA_FILE, LLAVA_DIR

pytestmark = pytest.mark.server


def graph(llm: str, clip: str, dtype: str = "auto", template: str = "video", custom: str = "",
          negative: str = "") -> dict:
    return {
        "1": {"class_type": "HunyuanVideoTextEncoderLoader", "inputs": {"llm": llm, "clip": clip, "dtype": dtype}},
        "2": {"class_type": "HunyuanVideoTextEncode", "inputs": {
            "text_encoder": ["1", 0], "prompt": "A red fox runs through snow.", "negative_prompt": negative,
            "template": template, "custom_template": custom, "hidden_state_skip_layer": 2,
            "apply_final_norm": False}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }


def combo(spec: list) -> list[str]:
    """Options of a combo input in /object_info (V3 nodes: ["COMBO", {"options": [...]}])."""
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]


def preview_text(entry: dict) -> str:
    return "".join(entry["outputs"]["3"]["text"])


def test_loader_lists_every_tiny_layout(comfy):
    info = comfy.object_info()["HunyuanVideoTextEncoderLoader"]["input"]["required"]
    llm_options, clip_options = combo(info["llm"]), combo(info["clip"])
    assert {LLAMA_DIR, LLAVA_DIR, LLAMA_FILE} <= set(llm_options)
    assert {CLIP_DIR, CLIP_FILE} <= set(clip_options)
    assert not any(o.startswith(CLIP_DIR + "/") for o in clip_options)  # HF folder files are not listed one by one
    assert "fp8_e4m3fn (bf16 compute)" in combo(info["dtype"])


@pytest.mark.parametrize(("llm", "clip", "dtype"), [
    (LLAMA_DIR, CLIP_DIR, "auto"),
    (LLAVA_DIR, CLIP_FILE, "fp32"),
    (LLAMA_FILE, CLIP_FILE, "fp8_e4m3fn (bf16 compute)"),
])
def test_each_layout_encodes(comfy, llm, clip, dtype):
    entry = comfy.run(graph(llm, clip, dtype, negative="blurry"))
    text = preview_text(entry)
    assert text.startswith("PromptEmbeds(positive=TextEmbeds(")
    assert "negative=TextEmbeds(" in text


def test_clip_file_as_llm_is_explained(comfy):
    error = comfy.run_expect_error(graph(CLIP_FILE, CLIP_DIR))
    assert "is not a Llama language model" in error and CLIP_FILE in error


def test_custom_template_needs_text(comfy):
    error = comfy.run_expect_error(graph(LLAMA_DIR, CLIP_DIR, template="custom"))
    assert "custom_template" in error
